/* A C program that embeds shmrt through its C API: it runs the upper
 * plugin (examples/upper), sends a short message as a copy, then writes a
 * 1 MiB payload in place in a slot of the sandbox's segment, receives the
 * plugin's answer (the same slot, upper-cased where it lies) as a view,
 * checks it without copying it, and ends the sandbox.
 *
 * Run:
 *
 *   cargo build --release -p shmrt-capi -p shmrt-cli
 *   cc -O2 -I bindings/c/include examples/c-host/main.c \
 *      target/release/libshmrt_capi.a -lpthread -ldl -lm -o /tmp/c-host
 *   /tmp/c-host $(target/release/shmrt build examples/upper)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmrt.h"

#define CHECK(call)                                                        \
    do {                                                                   \
        int32_t status_ = (call);                                          \
        if (status_ != SHMRT_OK) {                                         \
            fprintf(stderr, "%s failed (%d): %s\n", #call, (int)status_,   \
                    shmrt_last_error());                                   \
            return 1;                                                      \
        }                                                                  \
    } while (0)

#define PAYLOAD (1u << 20)

/* Writes the 1 MiB request where it will be sent: in the slot. */
static int32_t fill(void *user, uint8_t *data, size_t len) {
    (void)user;
    for (size_t i = 0; i < len; i++) {
        data[i] = (uint8_t)('a' + i % 26);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s UPPER.wasm (shmrt build examples/upper)\n", argv[0]);
        return 2;
    }
    ShmrtRuntime runtime;
    ShmrtPlugin plugin;
    ShmrtOptions options;
    ShmrtSandbox sandbox;
    CHECK(shmrt_runtime_new(0, &runtime));
    CHECK(shmrt_plugin_from_file(runtime, argv[1], &plugin));
    CHECK(shmrt_options_new(&options));
    CHECK(shmrt_options_set_name(options, "upper"));
    CHECK(shmrt_options_set_timeout_ms(options, 60000));
    CHECK(shmrt_spawn(plugin, options, &sandbox));

    /* A short message, copied in. */
    const char *hello = "hello from C";
    CHECK(shmrt_send(sandbox, (const uint8_t *)hello, strlen(hello)));
    ShmrtMessage msg;
    const uint8_t *data;
    size_t len;
    CHECK(shmrt_recv(sandbox, -1, &msg, &data, &len));
    printf("%.*s\n", (int)len, (const char *)data);
    CHECK(shmrt_message_release(msg));

    /* 1 MiB written in place, answered in the same slot. */
    CHECK(shmrt_send_with(sandbox, PAYLOAD, fill, NULL));
    CHECK(shmrt_recv(sandbox, -1, &msg, &data, &len));
    const uint8_t *base;
    size_t window;
    CHECK(shmrt_sandbox_window(sandbox, &base, &window));
    int in_window = data >= base && data + len <= base + window;
    size_t wrong = 0;
    for (size_t i = 0; i < len; i++) {
        wrong += data[i] != (uint8_t)('A' + i % 26);
    }
    printf("1 MiB reply: %zu bytes, %zu wrong, read in place: %s\n", len, wrong,
           in_window ? "yes" : "no");
    CHECK(shmrt_message_release(msg));

    int32_t status = -1;
    CHECK(shmrt_close(sandbox, 10000, &status));
    printf("exit status %d\n", (int)status);
    CHECK(shmrt_sandbox_free(sandbox));
    CHECK(shmrt_options_free(options));
    CHECK(shmrt_plugin_free(plugin));
    CHECK(shmrt_runtime_free(runtime));
    return len == PAYLOAD && wrong == 0 && in_window && status == 0 ? 0 : 1;
}

/* Misuse of the C API: every case must give an error code (and a message),
 * never a crash. Run by tests/c_api.rs with the upper plugin's path. */
#include <stdio.h>
#include <string.h>

#include "shmrt.h"

static int failures = 0;

#define EXPECT(call, want)                                                  \
    do {                                                                    \
        int32_t got_ = (call);                                              \
        if (got_ != (want)) {                                               \
            fprintf(stderr, "line %d: %s gave %d, expected %d (%s)\n",      \
                    __LINE__, #call, (int)got_, (int)(want),                \
                    shmrt_last_error());                                    \
            failures++;                                                     \
        }                                                                   \
    } while (0)

#define EXPECT_MESSAGE(part)                                                \
    do {                                                                    \
        if (strstr(shmrt_last_error(), (part)) == NULL) {                   \
            fprintf(stderr, "line %d: last error \"%s\" lacks \"%s\"\n",    \
                    __LINE__, shmrt_last_error(), (part));                  \
            failures++;                                                     \
        }                                                                   \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    ShmrtRuntime runtime;
    ShmrtPlugin plugin;
    ShmrtOptions options;
    ShmrtSandbox sandbox;
    ShmrtMessage msg;
    const uint8_t *data;
    size_t len;

    /* Null pointers. */
    EXPECT(shmrt_runtime_new(0, NULL), SHMRT_ERR_NULL);
    EXPECT_MESSAGE("null");
    EXPECT(shmrt_runtime_new(0, &runtime), SHMRT_OK);
    EXPECT(shmrt_plugin_from_file(runtime, NULL, &plugin), SHMRT_ERR_NULL);
    EXPECT(shmrt_plugin_new(runtime, NULL, 10, &plugin), SHMRT_ERR_NULL);
    EXPECT(shmrt_plugin_new(runtime, (const uint8_t *)"nonsense", 8, &plugin), SHMRT_ERR_REFUSED);
    EXPECT(shmrt_plugin_from_file(runtime, "/nonexistent.wasm", &plugin), SHMRT_ERR_OTHER);
    EXPECT_MESSAGE("/nonexistent.wasm");
    EXPECT(shmrt_plugin_from_file(runtime, argv[1], &plugin), SHMRT_OK);
    EXPECT(shmrt_options_new(&options), SHMRT_OK);
    EXPECT(shmrt_options_set_name(options, NULL), SHMRT_ERR_NULL);
    EXPECT(shmrt_options_set_name(options, "misuse"), SHMRT_OK);
    EXPECT(shmrt_options_set_execution(options, 42), SHMRT_ERR_INVALID);
    EXPECT(shmrt_options_set_config(options, "", "x"), SHMRT_OK); /* checked at spawn */
    EXPECT(shmrt_spawn(plugin, options, &sandbox), SHMRT_ERR_REFUSED);
    EXPECT_MESSAGE("config key");
    EXPECT(shmrt_options_free(options), SHMRT_OK);
    EXPECT(shmrt_options_free(options), SHMRT_ERR_BAD_HANDLE);
    EXPECT_MESSAGE("released");

    /* Handles of the wrong kind, and none. */
    ShmrtSandbox not_a_sandbox = {plugin.id};
    EXPECT(shmrt_send(not_a_sandbox, (const uint8_t *)"x", 1), SHMRT_ERR_BAD_HANDLE);
    EXPECT_MESSAGE("is a plugin, not a sandbox");
    ShmrtSandbox none = {0};
    EXPECT(shmrt_goodbye(none), SHMRT_ERR_BAD_HANDLE);

    EXPECT(shmrt_spawn(plugin, (ShmrtOptions){0}, NULL), SHMRT_ERR_NULL);
    EXPECT(shmrt_spawn(plugin, (ShmrtOptions){0}, &sandbox), SHMRT_OK);
    EXPECT(shmrt_send(sandbox, NULL, 5), SHMRT_ERR_NULL);
    EXPECT(shmrt_send(sandbox, NULL, 0), SHMRT_OK); /* an empty message */
    EXPECT(shmrt_recv(sandbox, -1, NULL, NULL, NULL), SHMRT_ERR_NULL);
    EXPECT(shmrt_recv(sandbox, -1, &msg, NULL, NULL), SHMRT_OK);
    EXPECT(shmrt_message_release(msg), SHMRT_OK);
    EXPECT(shmrt_send_with(sandbox, 4, NULL, NULL), SHMRT_ERR_NULL);

    /* Too large for any slot. */
    static uint8_t big[2u << 20];
    EXPECT(shmrt_send(sandbox, big, sizeof big), SHMRT_ERR_TOO_LARGE);
    EXPECT_MESSAGE("exceeds the largest slot payload");

    /* Released twice, used after release, one held at a time. */
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"abc", 3), SHMRT_OK);
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"def", 3), SHMRT_OK);
    EXPECT(shmrt_recv(sandbox, -1, &msg, &data, &len), SHMRT_OK);
    if (len != 3 || memcmp(data, "ABC", 3) != 0) {
        fprintf(stderr, "line %d: wrong reply\n", __LINE__);
        failures++;
    }
    ShmrtMessage second;
    EXPECT(shmrt_recv(sandbox, -1, &second, NULL, NULL), SHMRT_ERR_BUSY);
    EXPECT_MESSAGE("release it");
    EXPECT(shmrt_message_release(msg), SHMRT_OK);
    EXPECT(shmrt_message_release(msg), SHMRT_ERR_BAD_HANDLE);
    EXPECT(shmrt_message_data(msg, &data, &len), SHMRT_ERR_BAD_HANDLE);
    EXPECT(shmrt_recv(sandbox, 5000, &msg, &data, &len), SHMRT_OK);
    EXPECT(shmrt_message_data(msg, NULL, &len), SHMRT_ERR_NULL);
    EXPECT(shmrt_message_reply_in_place(msg, NULL, NULL), SHMRT_ERR_NULL);
    EXPECT(shmrt_message_release(msg), SHMRT_OK); /* a refused reply keeps it */
    EXPECT(shmrt_message_release(msg), SHMRT_ERR_BAD_HANDLE);

    /* Nothing there: SHMRT_EMPTY, not an error. */
    EXPECT(shmrt_recv(sandbox, 0, &msg, NULL, NULL), SHMRT_EMPTY);
    EXPECT(shmrt_recv(sandbox, 20, &msg, NULL, NULL), SHMRT_EMPTY);

    /* A message held across the join: released by it. */
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"xyz", 3), SHMRT_OK);
    EXPECT(shmrt_recv(sandbox, -1, &msg, NULL, NULL), SHMRT_OK);
    EXPECT(shmrt_goodbye(sandbox), SHMRT_OK);
    int32_t status = -1;
    EXPECT(shmrt_join(sandbox, &status), SHMRT_OK);
    EXPECT(status, 0);
    EXPECT(shmrt_message_data(msg, &data, &len), SHMRT_ERR_BAD_HANDLE);
    EXPECT_MESSAGE("already released");
    EXPECT(shmrt_message_release(msg), SHMRT_OK); /* its handle goes */

    /* Used after join. */
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"x", 1), SHMRT_ERR_JOINED);
    EXPECT_MESSAGE("already joined");
    EXPECT(shmrt_recv(sandbox, 0, &msg, NULL, NULL), SHMRT_ERR_JOINED);
    EXPECT(shmrt_join(sandbox, &status), SHMRT_ERR_JOINED);
    EXPECT(shmrt_stop(sandbox), SHMRT_OK); /* harmless */
    EXPECT(shmrt_sandbox_free(sandbox), SHMRT_OK);
    EXPECT(shmrt_sandbox_free(sandbox), SHMRT_ERR_BAD_HANDLE);
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"x", 1), SHMRT_ERR_BAD_HANDLE);

    /* A sandbox freed while its message is held. */
    EXPECT(shmrt_spawn(plugin, (ShmrtOptions){0}, &sandbox), SHMRT_OK);
    EXPECT(shmrt_send(sandbox, (const uint8_t *)"q", 1), SHMRT_OK);
    EXPECT(shmrt_recv(sandbox, -1, &msg, NULL, NULL), SHMRT_OK);
    EXPECT(shmrt_sandbox_free(sandbox), SHMRT_OK);
    EXPECT(shmrt_message_data(msg, &data, &len), SHMRT_ERR_BAD_HANDLE);
    EXPECT(shmrt_message_release(msg), SHMRT_OK);

    EXPECT(shmrt_plugin_free(plugin), SHMRT_OK);
    EXPECT(shmrt_plugin_free(plugin), SHMRT_ERR_BAD_HANDLE);
    EXPECT(shmrt_runtime_free(runtime), SHMRT_OK);
    EXPECT(shmrt_runtime_free(runtime), SHMRT_ERR_BAD_HANDLE);

    printf("misuse: %d failures\n", failures);
    return failures == 0 ? 0 : 1;
}

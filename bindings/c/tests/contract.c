/* The plugin contract from C: calls by name, configuration and a host
 * function as a C function pointer, in every execution mode. Run by
 * tests/c_api.rs with the text-tools plugin's path. */
#include <stdio.h>
#include <string.h>

#include "shmrt.h"

static int failures = 0;

#define CHECK(call)                                                         \
    do {                                                                    \
        int32_t got_ = (call);                                              \
        if (got_ != SHMRT_OK) {                                             \
            fprintf(stderr, "line %d: %s gave %d (%s)\n", __LINE__, #call,  \
                    (int)got_, shmrt_last_error());                         \
            failures++;                                                     \
        }                                                                   \
    } while (0)

static int32_t kv_get(void *user, const uint8_t *input, size_t len, ShmrtHostOutput *out) {
    int *calls = user;
    (*calls)++;
    if (len == 7 && memcmp(input, "user:42", 7) == 0) {
        return shmrt_host_output_write(out, (const uint8_t *)"Ada Lovelace", 12);
    }
    shmrt_host_output_error(out, "no such key");
    return 404;
}

static void expect_output(ShmrtSandbox sandbox, const char *function, const char *input,
                          const char *want) {
    ShmrtBytes out;
    const uint8_t *data;
    size_t len;
    int32_t status = shmrt_call(sandbox, function, (const uint8_t *)input, strlen(input), 30000, &out);
    if (status != SHMRT_OK) {
        fprintf(stderr, "%s failed (%d): %s\n", function, (int)status, shmrt_last_error());
        failures++;
        return;
    }
    CHECK(shmrt_bytes_data(out, &data, &len));
    if (len != strlen(want) || memcmp(data, want, len) != 0) {
        fprintf(stderr, "%s gave \"%.*s\", expected \"%s\"\n", function, (int)len, data, want);
        failures++;
    }
    CHECK(shmrt_bytes_free(out));
    if (shmrt_bytes_free(out) != SHMRT_ERR_BAD_HANDLE) {
        failures++;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    ShmrtRuntime runtime;
    ShmrtPlugin plugin;
    CHECK(shmrt_runtime_new(0, &runtime));
    CHECK(shmrt_plugin_from_file(runtime, argv[1], &plugin));
    int calls = 0;
    const int32_t modes[] = {SHMRT_EXEC_THREAD, SHMRT_EXEC_FIBER, SHMRT_EXEC_CALLBACK};
    for (size_t m = 0; m < 3; m++) {
        ShmrtOptions options;
        ShmrtSandbox sandbox;
        CHECK(shmrt_options_new(&options));
        CHECK(shmrt_options_set_name(options, "text-tools"));
        CHECK(shmrt_options_set_execution(options, modes[m]));
        CHECK(shmrt_options_set_config(options, "greeting", "Bonjour"));
        CHECK(shmrt_options_add_host_function(options, "kv_get", kv_get, &calls));
        CHECK(shmrt_spawn(plugin, options, &sandbox));
        CHECK(shmrt_options_free(options));
        expect_output(sandbox, "greet", "Grace", "Bonjour, Grace!");
        expect_output(sandbox, "lookup", "user:42", "Ada Lovelace");
        ShmrtBytes out;
        int32_t status = shmrt_call(sandbox, "lookup", (const uint8_t *)"user:7", 6, -1, &out);
        if (status != SHMRT_ERR_PLUGIN || strstr(shmrt_last_error(), "no such key") == NULL) {
            fprintf(stderr, "lookup of a missing key gave %d: %s\n", (int)status, shmrt_last_error());
            failures++;
        }
        status = shmrt_call(sandbox, "no_such_function", NULL, 0, -1, &out);
        if (status != SHMRT_ERR_PLUGIN || shmrt_last_plugin_code() >= 0) {
            fprintf(stderr, "an unknown function gave %d (code %d)\n", (int)status,
                    (int)shmrt_last_plugin_code());
            failures++;
        }
        int32_t exit_status = -1;
        CHECK(shmrt_close(sandbox, 10000, &exit_status));
        CHECK(shmrt_sandbox_free(sandbox));
    }
    if (calls != 6) {
        fprintf(stderr, "kv_get ran %d times, expected 6\n", calls);
        failures++;
    }
    CHECK(shmrt_plugin_free(plugin));
    CHECK(shmrt_runtime_free(runtime));
    printf("contract: %d failures\n", failures);
    return failures == 0 ? 0 : 1;
}

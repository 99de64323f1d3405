/*
 * c-calls: the plugin contract in C. Exports
 *   greet(name)  -> "<config greeting or Hello>, <name>!"
 *   lookup(key)  -> the host function kv_get's answer; its failure becomes
 *                   this call's failure (code 2, the host's message)
 *   fail(_)      -> always fails with code 7, "asked to fail"
 *   count(_)     -> how many calls this instance answered (u32 LE): state
 *                   kept across calls
 */
#include "shmrt_guest.h"

static uint32_t calls;

static size_t copy(uint8_t *dst, size_t at, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dst[at + i] = src[i];
    }
    return at + n;
}

static int32_t greet(shmrt_call call) {
    calls++;
    const uint8_t *name;
    size_t name_len;
    int32_t rc = shmrt_call_input(call, &name, &name_len);
    if (rc != SHMRT_OK) {
        return rc;
    }
    uint8_t greeting[64];
    size_t greeting_len = 0;
    if (shmrt_config_get("greeting", 8, greeting, sizeof greeting, &greeting_len) != SHMRT_OK) {
        greeting_len = copy(greeting, 0, (const uint8_t *)"Hello", 5);
    }
    uint8_t out[256];
    if (name_len > sizeof out - greeting_len - 3) {
        return shmrt_call_fail(call, 3, "name too long", 13);
    }
    size_t n = copy(out, 0, greeting, greeting_len);
    n = copy(out, n, (const uint8_t *)", ", 2);
    n = copy(out, n, name, name_len);
    n = copy(out, n, (const uint8_t *)"!", 1);
    return shmrt_call_reply(call, out, n);
}

static int32_t lookup(shmrt_call call) {
    calls++;
    const uint8_t *key;
    size_t key_len;
    int32_t rc = shmrt_call_input(call, &key, &key_len);
    if (rc != SHMRT_OK) {
        return rc;
    }
    uint8_t value[128];
    size_t value_len = 0;
    rc = shmrt_host_call("kv_get", 6, key, key_len, value, sizeof value, &value_len);
    if (rc == SHMRT_OK) {
        return shmrt_call_reply(call, value, value_len);
    }
    if (rc == SHMRT_E_HOST_FAILED) {
        int32_t code = 0;
        char message[128];
        size_t message_len = 0;
        shmrt_host_error(&code, message, sizeof message, &message_len);
        if (message_len > sizeof message) {
            message_len = sizeof message;
        }
        return shmrt_call_fail(call, 2, message, message_len);
    }
    const char *text = shmrt_strerror(rc);
    size_t text_len = 0;
    while (text[text_len] != 0) {
        text_len++;
    }
    return shmrt_call_fail(call, 4, text, text_len);
}

static int32_t fail(shmrt_call call) {
    calls++;
    return shmrt_call_fail(call, 7, "asked to fail", 13);
}

static int32_t count(shmrt_call call) {
    calls++;
    uint8_t le[4] = {(uint8_t)calls, (uint8_t)(calls >> 8), (uint8_t)(calls >> 16),
                     (uint8_t)(calls >> 24)};
    return shmrt_call_reply(call, le, 4);
}

SHMRT_EXPORTS(SHMRT_EXPORT(greet), SHMRT_EXPORT(lookup), SHMRT_EXPORT(fail), SHMRT_EXPORT(count))

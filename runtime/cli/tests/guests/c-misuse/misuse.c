/*
 * A C plugin that misuses the C ABI on purpose (tests/c_and_zig_guests.rs):
 * each misuse must give its documented error code, never undefined
 * behaviour. A receive loop (SHMRT_MAIN); per input line:
 *   "misuse": sends one line `name=code ...` of every check;
 *   "spin":   spins forever (for the timeout test);
 *   "bye":    says goodbye, then tries to send: exit 0 when refused.
 */
#include "shmrt_guest.h"

static char line[1024];
static size_t at;

static void put(const char *s) {
    while (*s && at < sizeof line) line[at++] = *s++;
}

static void put_num(int32_t v) {
    char buf[12];
    int n = 0;
    uint32_t u = v < 0 ? (uint32_t)(-(int64_t)v) : (uint32_t)v;
    if (v < 0) put("-");
    do { buf[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    while (n) { char c[2] = {buf[--n], 0}; put(c); }
}

static void check(const char *name, int32_t code) {
    if (at) put(" ");
    put(name);
    put("=");
    put_num(code);
}

static int same(const uint8_t *a, size_t n, const char *b) {
    size_t i = 0;
    for (; i < n && b[i]; i++) if (a[i] != (uint8_t)b[i]) return 0;
    return i == n && b[i] == 0;
}

static int32_t misuse(shmrt_msg msg) {
    const uint8_t *data;
    size_t len;
    shmrt_msg other;
    shmrt_reservation res;
    uint8_t *room;
    uint8_t buf[8];
    int32_t got;

    at = 0;
    check("null_data", shmrt_msg_data(msg, 0, &len));
    check("null_recv", shmrt_recv(0));
    check("recv_while_held", shmrt_recv(&other));
    check("made_up", shmrt_release(0x12345));
    check("reply_null", shmrt_reply_in_place(msg, 0, 0));
    check("release", shmrt_release(msg));
    check("release_twice", shmrt_release(msg));
    check("use_after_release", shmrt_msg_data(msg, &data, &len));
    check("send_null", shmrt_send(0, 5));
    check("reserve_null", shmrt_reserve(8, 0, &room));
    check("reserve", shmrt_reserve(8, &res, &room));
    check("send_while_reserved", shmrt_send((const uint8_t *)"x", 1));
    check("over_commit", shmrt_commit(res, 9));
    check("abandon", shmrt_abandon(res));
    check("commit_after_abandon", shmrt_commit(res, 1));
    check("log_level", shmrt_log(9, "x", 1));
    check("log_not_utf8", shmrt_log(2, "\xff", 1));
    check("config_missing", shmrt_config_get("missing", 7, buf, sizeof buf, &len));
    check("host_fn_missing", shmrt_host_call("nope", 4, 0, 0, buf, sizeof buf, &len));
    /* Lengths that overflowed, and buffers that alias. */
    check("send_len_overflow", shmrt_send((const uint8_t *)"x", (size_t)-1));
    check("log_len_overflow", shmrt_log(2, "x", (size_t)-1 / 2 + 1));
    check("host_fn_len_overflow",
          shmrt_host_call("nope", 4, buf, (size_t)-1, buf, sizeof buf, &len));
    buf[0] = 'k';
    check("host_fn_overlap", shmrt_host_call("nope", 4, buf, 4, buf + 2, 4, &len));
    check("config_overlap", shmrt_config_get((const char *)buf, 1, buf, sizeof buf, &len));
    got = shmrt_host_goodbye();
    check("host_goodbye_is_0_or_1", got == 0 || got == 1);
    check("peer", (int32_t)shmrt_peer_id());
    return shmrt_send((const uint8_t *)line, at);
}

static int32_t run(void) {
    shmrt_msg msg;
    const uint8_t *data;
    size_t len;
    int32_t got;
    while ((got = shmrt_recv(&msg)) == 1) {
        shmrt_msg_data(msg, &data, &len);
        if (same(data, len, "misuse")) {
            if (misuse(msg) != 0) return 3;
        } else if (same(data, len, "spin")) {
            for (volatile int i = 0;; i++) {}
        } else if (same(data, len, "bye")) {
            shmrt_release(msg);
            shmrt_goodbye();
            return shmrt_send((const uint8_t *)"after", 5) == SHMRT_E_GOODBYE ? 0 : 9;
        } else {
            shmrt_release(msg);
        }
    }
    return got == 0 ? 0 : 4;
}

SHMRT_MAIN(run)

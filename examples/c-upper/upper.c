/*
 * c-upper: upper-cases every message where it is. A message that came in
 * a slot is rewritten in that slot and sent back with it (no copy); an
 * inline one is rewritten in the reply's ring bytes. One handler: it runs
 * in every execution mode of the host.
 *
 * Run: printf 'hello\nworld\n' | shmrt run $(shmrt build examples/c-upper)
 */
#include "shmrt_guest.h"

static size_t upper(uint8_t *bytes, size_t len, void *ctx) {
    (void)ctx;
    for (size_t i = 0; i < len; i++) {
        if (bytes[i] >= 'a' && bytes[i] <= 'z') {
            bytes[i] = (uint8_t)(bytes[i] - ('a' - 'A'));
        }
    }
    return len;
}

static int32_t handle(shmrt_msg msg) {
    return shmrt_reply_in_place(msg, upper, 0);
}

SHMRT_HANDLER(handle)

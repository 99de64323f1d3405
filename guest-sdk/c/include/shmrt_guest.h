/*
 * shmrt_guest.h: plugins for shmrt in C, C++ and Zig.
 *
 * The C ABI of the shmrt guest SDK: this header declares what the static
 * library libshmrt_guest_c.a (the Rust SDK, built for wasm32 with atomics)
 * exports. The protocol (rings, slots, frames, doorbells, call headers) is
 * the SDK's own code; nothing of it is in this header.
 *
 * A plugin is one handler, run in every execution mode of the host
 * (`shmrt run --exec thread|fiber|callback`):
 *
 *     #include "shmrt_guest.h"
 *
 *     static size_t upper(uint8_t *bytes, size_t len, void *ctx) {
 *         for (size_t i = 0; i < len; i++)
 *             if (bytes[i] >= 'a' && bytes[i] <= 'z') bytes[i] -= 32;
 *         return len;
 *     }
 *     static int32_t handle(shmrt_msg msg) {
 *         return shmrt_reply_in_place(msg, upper, 0);
 *     }
 *     SHMRT_HANDLER(handle)
 *
 * Build and run:  printf 'hello\n' | shmrt run $(shmrt build .)
 *
 * Handles. A received message (shmrt_msg), a reservation
 * (shmrt_reservation) and a call (shmrt_call) are handles, not pointers:
 * each is checked at every use, so a handle used after its release,
 * released twice, or made up gives an error code (SHMRT_E_RELEASED,
 * SHMRT_E_HANDLE), never a read of freed memory. One message and one
 * reservation are held at a time (each borrows the inbox or the outbox).
 * A handler's message, and whatever it left reserved, are released when
 * the handler returns.
 *
 * Pointers. Every pointer argument is checked for NULL (SHMRT_E_NULL); a
 * buffer of length 0 may be NULL. A buffer whose length runs past the end
 * of the address space (a length that overflowed) is SHMRT_E_BAD_ARG. Bytes a function returns by pointer
 * (a message's payload, a reservation) stay valid until the handle is
 * released.
 *
 * Results. Functions return int32_t: 0 (SHMRT_OK) or more on success, a
 * negative SHMRT_E_* code on failure; shmrt_strerror(code) names it.
 */
#ifndef SHMRT_GUEST_H
#define SHMRT_GUEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes --------------------------------------------------- */

/** Success. */
#define SHMRT_OK 0
/** A required pointer is NULL. */
#define SHMRT_E_NULL (-1)
/** Not a handle of this kind (0, made up, or of another kind). */
#define SHMRT_E_HANDLE (-2)
/** The handle was released already (used after release, released twice,
 *  a call answered twice). */
#define SHMRT_E_RELEASED (-3)
/** A message (for shmrt_recv) or a reservation (for sends) is held:
 *  release or commit it first; or the outbox is in use by the send that
 *  runs this code (a transform of shmrt_reply_in_place). */
#define SHMRT_E_BUSY (-4)
/** shmrt_commit of more bytes than reserved (the reservation stays). */
#define SHMRT_E_OVER_COMMIT (-5)
/** The plugin said goodbye (shmrt_goodbye): it sends nothing more. */
#define SHMRT_E_GOODBYE (-6)
/** Larger than the largest slot payload of the segment. */
#define SHMRT_E_TOO_LARGE (-7)
/** No room for the message while the plugin runs as a callback (the host
 *  reads answers when the callback returns): send less per message. */
#define SHMRT_E_WOULD_BLOCK (-8)
/** No slot of the class the message needs came free within the slot
 *  wait (5 s): the other side holds them. */
#define SHMRT_E_SLOTS_EXHAUSTED (-9)
/** The host broke the protocol. */
#define SHMRT_E_PROTOCOL (-10)
/** The channel to the host could not be opened (logged). */
#define SHMRT_E_OPEN (-11)
/** No channel here: a handler plugin sends from inside its handler. */
#define SHMRT_E_NO_CHANNEL (-12)
/** Not allowed inside a handler (shmrt_recv: the handler gets its
 *  messages). */
#define SHMRT_E_IN_HANDLER (-13)
/** SHMRT_HANDLER / SHMRT_EXPORTS and a receive loop mixed in one plugin. */
#define SHMRT_E_MODE (-14)
/** Text (a log line, a key, a name, a failure message) is not UTF-8. */
#define SHMRT_E_NOT_UTF8 (-15)
/** An argument is out of range (a log level outside 0..4, a buffer past
 *  the end of the address space, a host call's output overlapping its
 *  input). */
#define SHMRT_E_BAD_ARG (-16)
/** No such configuration key, host function, or kept result. */
#define SHMRT_E_NOT_FOUND (-17)
/** The buffer is too short: *len says how long it must be. */
#define SHMRT_E_TOO_SHORT (-18)
/** The host function failed: shmrt_host_error gives its code and
 *  message. */
#define SHMRT_E_HOST_FAILED (-19)
/** The host function panicked: shmrt_host_error gives its message. */
#define SHMRT_E_HOST_PANICKED (-20)
/** The host refused the request (a host call from inside a host call,
 *  a sandbox being stopped). */
#define SHMRT_E_REFUSED (-21)

/* ---- handles ------------------------------------------------------- */

/** A received message. */
typedef uint32_t shmrt_msg;
/** Room reserved for a message to send. */
typedef uint32_t shmrt_reservation;
/** A call of an exported function (SHMRT_EXPORTS). */
typedef uint32_t shmrt_call;

/** A message handler: 0 to go on; non-zero ends the plugin with that exit
 *  status (a negative SHMRT_E_* code is logged and ends it with 1, or 75
 *  for SHMRT_E_SLOTS_EXHAUSTED). */
typedef int32_t (*shmrt_handler_fn)(shmrt_msg msg);
/** Rewrites `len` bytes in place; returns the reply's length (at most
 *  `len`: more is cut). */
typedef size_t (*shmrt_transform_fn)(uint8_t *bytes, size_t len, void *ctx);
/** An exported function: answers `call` (shmrt_call_reply,
 *  shmrt_call_fail); left unanswered, it replies with no bytes when it
 *  returns 0 and fails with the code it returns otherwise. */
typedef int32_t (*shmrt_export_fn)(shmrt_call call);

/** One exported function: its name (NUL-terminated UTF-8) and itself. */
typedef struct shmrt_export {
    const char *name;
    shmrt_export_fn func;
} shmrt_export;

/* ---- entry points -------------------------------------------------- */

/** Thread and fiber mode: calls `handler` with each message until the
 *  host's goodbye; the exit status. SHMRT_HANDLER uses it. */
int32_t shmrt_serve(shmrt_handler_fn handler);
/** Callback mode: calls `handler` with the messages queued now.
 *  SHMRT_HANDLER uses it. */
int32_t shmrt_answer_queued(shmrt_handler_fn handler);
/** Thread and fiber mode of calls by name (SHMRT_EXPORTS). */
int32_t shmrt_serve_exports(const shmrt_export *exports, size_t count);
/** Callback mode of calls by name (SHMRT_EXPORTS). */
int32_t shmrt_answer_exports(const shmrt_export *exports, size_t count);

#if defined(__wasm__)
#define SHMRT__EXPORT_AS(name) __attribute__((export_name(name)))
#else
#define SHMRT__EXPORT_AS(name)
#endif
#ifdef __cplusplus
#define SHMRT__EXTERN_C extern "C"
#else
#define SHMRT__EXTERN_C
#endif

/** Defines the plugin by its message handler: exports shmrt_main (thread
 *  and fiber mode) and shmrt_on_messages (callback mode). */
#define SHMRT_HANDLER(handler)                                             \
    SHMRT__EXTERN_C SHMRT__EXPORT_AS("shmrt_main")                         \
    int32_t shmrt_main(void) { return shmrt_serve(handler); }              \
    SHMRT__EXTERN_C SHMRT__EXPORT_AS("shmrt_on_messages")                  \
    int32_t shmrt_on_messages(void) { return shmrt_answer_queued(handler); }

/** One entry of SHMRT_EXPORTS: the function `f`, exported as "f". */
#define SHMRT_EXPORT(f) {#f, f}

/** Defines the plugin by the functions it exports, for calls by name in
 *  every execution mode: SHMRT_EXPORTS(SHMRT_EXPORT(a), SHMRT_EXPORT(b)). */
#define SHMRT_EXPORTS(...)                                                 \
    static const shmrt_export shmrt__exports[] = {__VA_ARGS__};            \
    SHMRT__EXTERN_C SHMRT__EXPORT_AS("shmrt_main")                         \
    int32_t shmrt_main(void) {                                             \
        return shmrt_serve_exports(                                        \
            shmrt__exports, sizeof shmrt__exports / sizeof shmrt__exports[0]); \
    }                                                                      \
    SHMRT__EXTERN_C SHMRT__EXPORT_AS("shmrt_on_messages")                  \
    int32_t shmrt_on_messages(void) {                                      \
        return shmrt_answer_exports(                                       \
            shmrt__exports, sizeof shmrt__exports / sizeof shmrt__exports[0]); \
    }

/** Defines the plugin by a blocking loop, `int32_t main_fn(void)` (its
 *  value is the exit status), that calls shmrt_recv: thread and fiber
 *  mode only. */
#define SHMRT_MAIN(main_fn)                                                \
    SHMRT__EXTERN_C SHMRT__EXPORT_AS("shmrt_main")                         \
    int32_t shmrt_main(void) { return main_fn(); }

/* ---- messages ------------------------------------------------------ */

/** Waits for the next message (a SHMRT_MAIN loop): 1 with *msg set, 0
 *  once the host said goodbye and everything is read. SHMRT_E_BUSY while
 *  a message is held, SHMRT_E_IN_HANDLER inside a handler. */
int32_t shmrt_recv(shmrt_msg *msg);
/** The payload of `msg`, in place: *data and *len; valid until `msg` is
 *  released. */
int32_t shmrt_msg_data(shmrt_msg msg, const uint8_t **data, size_t *len);
/** 1 when `msg` came in a slot, 0 when inline in the ring. */
int32_t shmrt_msg_is_slot(shmrt_msg msg);
/** Gives `msg`'s ring bytes or slot back. */
int32_t shmrt_release(shmrt_msg msg);
/** Answers `msg` with its own bytes rewritten in place by `transform`
 *  (called with `ctx`): a slot goes back as it is, with no copy; an inline
 *  message is copied into the reply first. Releases `msg`. */
int32_t shmrt_reply_in_place(shmrt_msg msg, shmrt_transform_fn transform,
                             void *ctx);

/* ---- sending ------------------------------------------------------- */

/** Sends a copy of `len` bytes at `data`, waiting for room (not in
 *  callback mode: SHMRT_E_WOULD_BLOCK). */
int32_t shmrt_send(const uint8_t *data, size_t len);
/** Reserves `len` bytes for a message, waiting for room: *res is its
 *  handle, *data the bytes to fill in place. */
int32_t shmrt_reserve(size_t len, shmrt_reservation *res, uint8_t **data);
/** Sends the first `len` bytes of `res`. More than reserved is
 *  SHMRT_E_OVER_COMMIT, and the reservation stays held. */
int32_t shmrt_commit(shmrt_reservation res, size_t len);
/** Gives `res` back unsent. */
int32_t shmrt_abandon(shmrt_reservation res);
/** The plugin sends nothing more: later sends, replies and commits are
 *  SHMRT_E_GOODBYE. The host sees the plugin end when it returns. */
int32_t shmrt_goodbye(void);
/** 1 when the host said goodbye (it sends nothing more), else 0. */
int32_t shmrt_host_goodbye(void);

/* ---- calls by name ------------------------------------------------- */

/** The input of `call`, in place in the request. */
int32_t shmrt_call_input(shmrt_call call, const uint8_t **data, size_t *len);
/** Replies to `call` with a copy of `len` bytes at `data`. */
int32_t shmrt_call_reply(shmrt_call call, const uint8_t *data, size_t len);
/** Fails `call` with `code` (1 and up: the plugin's own; the host gets it
 *  as CallError::Plugin) and `len` bytes of UTF-8 `message`. */
int32_t shmrt_call_fail(shmrt_call call, int32_t code, const char *message,
                        size_t len);

/* ---- the host ------------------------------------------------------ */

/** Log levels of shmrt_log. */
#define SHMRT_LOG_TRACE 0
#define SHMRT_LOG_DEBUG 1
#define SHMRT_LOG_INFO 2
#define SHMRT_LOG_WARN 3
#define SHMRT_LOG_ERROR 4

/** Logs `len` bytes of UTF-8 at `level` (SHMRT_LOG_*). */
int32_t shmrt_log(int32_t level, const char *text, size_t len);
/** This guest's peer id (1..255). */
uint32_t shmrt_peer_id(void);
/** The host's monotonic clock, in nanoseconds. */
uint64_t shmrt_now_ns(void);
/** The text of an error code (static, NUL-terminated). */
const char *shmrt_strerror(int32_t code);

/** The configuration value of `key` (`shmrt run --config KEY=VALUE`) into
 *  `out`, *len its length: SHMRT_E_NOT_FOUND without such a key,
 *  SHMRT_E_TOO_SHORT (with *len the length) when it does not fit;
 *  SHMRT_E_BAD_ARG when `out` overlaps `key`. */
int32_t shmrt_config_get(const char *key, size_t key_len, uint8_t *out,
                         size_t cap, size_t *len);
/** Calls the host function `name` with `input` (read in place); its output
 *  goes to `out`, *out_len its length. SHMRT_E_TOO_SHORT (with *out_len
 *  the length): take it with shmrt_host_output. SHMRT_E_NOT_FOUND: no
 *  such function. SHMRT_E_HOST_FAILED, SHMRT_E_HOST_PANICKED: see
 *  shmrt_host_error. SHMRT_E_BAD_ARG: `out` overlaps `input` or `name`. */
int32_t shmrt_host_call(const char *name, size_t name_len,
                        const uint8_t *input, size_t input_len, uint8_t *out,
                        size_t cap, size_t *out_len);
/** Takes the output the last host call kept (SHMRT_E_TOO_SHORT) into
 *  `out`: *len its length; SHMRT_E_TOO_SHORT again while `cap` is short,
 *  SHMRT_E_NOT_FOUND when none is kept. */
int32_t shmrt_host_output(uint8_t *out, size_t cap, size_t *len);
/** The code and message of the last failed host call: the message's
 *  bytes that fit `cap` go to `message`, *len is its whole length. */
int32_t shmrt_host_error(int32_t *code, char *message, size_t cap,
                         size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* SHMRT_GUEST_H */

/*
 * c-bench-guest: the C guest of `shmrt bench`, doing what the callback
 * entry of the Rust bench guest (examples/bench-guest) does, so that the
 * c_guest_* ratios compare the languages and nothing else. Its first
 * message picks the work:
 *
 * - `checksum`: answer every later message with the sum of its payload's
 *   little-endian u64 words (u64 LE, the last word zero-padded), read in
 *   place with SIMD128: the same algorithm as the Rust guest's, loop for
 *   loop;
 * - anything else: echo every message, that first one included, each
 *   answered in place (its own bytes, no copy).
 *
 * Run: shmrt bench (it builds this plugin when Zig is installed), or
 *      printf 'hi\n' | shmrt run --exec callback $(shmrt build examples/c-bench-guest)
 */
#include <wasm_simd128.h>

#include "shmrt_guest.h"

/* Bytes per loop iteration, in independent chains of adds of PER_CHAIN
 * vectors. As in the Rust guest: each loop header may call into the
 * runtime (wasmtime's epoch check), so Cranelift keeps every value that
 * lives across iterations on the stack; a large body makes the checks
 * rare, and the loop is bound by loads, not arithmetic. */
#define BLOCK 1024
#define PER_CHAIN 8
_Static_assert(BLOCK / 16 / PER_CHAIN == 8, "sum_blocks writes out 8 chains");

#define INLINE static inline __attribute__((always_inline))
#define NOINLINE static __attribute__((noinline))

/* Where each chain's sum is written, and never read (see chain()). */
static v128_t chain_sink;

INLINE uint64_t lanes(v128_t v) {
    return (uint64_t)wasm_i64x2_extract_lane(v, 0) + (uint64_t)wasm_i64x2_extract_lane(v, 1);
}

/* The sum of the PER_CHAIN vectors from vector `first` of a block. The
 * sum is also written to chain_sink: a value with a second use stays one
 * of its own (the accumulator is not folded into the chain, which would
 * make the whole chain wait for the previous block), and the store is a
 * side effect here, so Cranelift computes the chain here, a few registers
 * at a time. */
INLINE v128_t chain(const uint8_t *base, size_t first) {
    v128_t sum = wasm_v128_load(base + 16 * first);
#pragma clang loop unroll(full)
    for (size_t i = first + 1; i < first + PER_CHAIN; i++) {
        sum = wasm_i64x2_add(sum, wasm_v128_load(base + 16 * i));
    }
    *(volatile v128_t *)&chain_sink = sum;
    return sum;
}

/* The word sum of a short run: whole vectors, then words. */
static uint64_t sum_tail(const uint8_t *bytes, size_t len) {
    v128_t v = wasm_i64x2_splat(0);
    size_t i = 0;
    for (; i + 16 <= len; i += 16) {
        v = wasm_i64x2_add(v, wasm_v128_load(bytes + i));
    }
    uint64_t total = lanes(v);
    for (; i < len; i += 8) {
        uint64_t word = 0;
        for (size_t k = 0; k < 8 && i + k < len; k++) {
            word |= (uint64_t)bytes[i + k] << (8 * k);
        }
        total += word;
    }
    return total;
}

/* Sums the words of the whole blocks of bytes[skip..]; *from and *to:
 * the range it covers. */
INLINE uint64_t sum_blocks(const uint8_t *bytes, size_t len, size_t skip, size_t *from,
                           size_t *to) {
    size_t blocks = len > skip ? (len - skip) / BLOCK : 0;
    if (blocks == 0) {
        *from = *to = 0;
        return 0;
    }
    v128_t acc = wasm_i64x2_splat(0);
    for (size_t b = 0; b < blocks; b++) {
        const uint8_t *base = bytes + skip + b * BLOCK;
        /* Opaque (the Rust guest's black_box), so that the loop optimizer
         * does not rewrite the loads' addresses into running pointers:
         * from a plain base, the offsets fold into the wasm loads. */
        __asm__ volatile("" : "+r"(base));
        /* Written out, not looped: a loop would get its own epoch check. */
        acc = wasm_i64x2_add(acc, chain(base, 0 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 1 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 2 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 3 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 4 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 5 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 6 * PER_CHAIN));
        acc = wasm_i64x2_add(acc, chain(base, 7 * PER_CHAIN));
    }
    *from = skip;
    *to = skip + blocks * BLOCK;
    return lanes(acc);
}

/* Words anywhere, loaded from `skip` bytes in (a multiple of 8). */
NOINLINE uint64_t sum64_from(const uint8_t *bytes, size_t len, size_t skip) {
    size_t from, to;
    uint64_t sum = sum_blocks(bytes, len, skip, &from, &to);
    return sum + sum_tail(bytes, from) + sum_tail(bytes + to, len - to);
}

/* The sum of the u64 LE words of `bytes` (shmrt_primitives'
 * checksum::sum64), as the Rust guest reads them: words on 8-byte
 * boundaries from the next 16-byte boundary, others as they come (a slot
 * payload follows its 4-byte length prefix, so a quarter of its loads
 * cross a cache line, which costs less than re-joining aligned loads). */
static uint64_t sum64(const uint8_t *bytes, size_t len) {
    return sum64_from(bytes, len, (uintptr_t)bytes % 16 == 8 ? 8 : 0);
}

/* What the first message picked: -1 not yet, 0 echo, 1 checksum. */
static int mode = -1;

static size_t same(uint8_t *bytes, size_t len, void *ctx) {
    (void)bytes;
    (void)ctx;
    return len;
}

static int is_checksum(shmrt_msg msg) {
    static const char word[] = "checksum";
    const uint8_t *data;
    size_t len;
    if (shmrt_msg_data(msg, &data, &len) < 0 || len != sizeof word - 1) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (data[i] != (uint8_t)word[i]) {
            return 0;
        }
    }
    return 1;
}

static int32_t handle(shmrt_msg msg) {
    int32_t r;
    if (mode == 1) {
        const uint8_t *data;
        size_t len;
        r = shmrt_msg_data(msg, &data, &len);
        if (r < 0) {
            return r;
        }
        uint64_t sum = sum64(data, len);
        /* The slot goes back before the answer takes room of its own. */
        r = shmrt_release(msg);
        if (r < 0) {
            return r;
        }
        r = shmrt_send((const uint8_t *)&sum, sizeof sum); /* wasm is LE */
        return r < 0 ? r : 0;
    }
    if (mode < 0) {
        mode = is_checksum(msg);
        if (mode == 1) {
            return 0; /* released as the handler returns */
        }
    }
    r = shmrt_reply_in_place(msg, same, 0);
    return r < 0 ? r : 0;
}

SHMRT_HANDLER(handle)

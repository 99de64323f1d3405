"""shmrt and Extism side by side from Python, on the same work: a 64-byte
echo, and a numpy array of 4 KiB and of 1 MiB handed to a plugin that
sums its u64 words and answers the sum (shmrt: examples/bench-guest's
`checksum` workload, reading the slot in place; Extism: a module in
Extism's ABI).

Run (after `pip install ./bindings/python extism numpy wasmtime`):

    python bindings/python/bench.py [--quick]

Extism's plugin is written in WAT against Extism's kernel imports
(`extism:host/env`: input_length, input_load_u64, alloc, store_u64,
output_set), as its PDKs compile to: the input is read a word at a time
through the kernel, as the Rust PDK's `input()` does.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

import shmrt

ROOT = pathlib.Path(__file__).resolve().parents[2]

EXTISM_WAT = """
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  ;; echo: the input copied into kernel memory, word by word, as output.
  (func (export "echo") (result i32)
    (local $len i64) (local $off i64) (local $i i64)
    (local.set $len (call $input_length))
    (local.set $off (call $alloc (local.get $len)))
    (block $done (loop $words
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $len)))
      (call $store_u64 (i64.add (local.get $off) (local.get $i)) (call $input_load_u64 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $words)))
    (block $tail_done (loop $tail
      (br_if $tail_done (i64.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $off) (local.get $i)) (call $input_load_u8 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $tail)))
    (call $output_set (local.get $off) (local.get $len))
    (i32.const 0))
  ;; sum: the wrapping sum of the input's u64 words, as 8 bytes.
  (func (export "sum") (result i32)
    (local $len i64) (local $i i64) (local $sum i64) (local $off i64)
    (local.set $len (call $input_length))
    (block $done (loop $words
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $len)))
      (local.set $sum (i64.add (local.get $sum) (call $input_load_u64 (local.get $i))))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $words)))
    (local.set $off (call $alloc (i64.const 8)))
    (call $store_u64 (local.get $off) (local.get $sum))
    (call $output_set (local.get $off) (i64.const 8))
    (i32.const 0)))
"""


def build_guest(example: str) -> str:
    out = subprocess.run(
        ["cargo", "build", "--release", "--message-format=json"],
        cwd=ROOT / "examples" / example,
        env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target" / "guests")},
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return [
        f
        for line in out.splitlines()
        if line.startswith(b"{")
        for msg in [json.loads(line)]
        if msg.get("reason") == "compiler-artifact"
        for f in msg.get("filenames", [])
        if f.endswith(".wasm")
    ][-1]


def per_op(f, n: int, rounds: int) -> float:
    """The best of `rounds` runs of `n` calls, in seconds per call."""
    f()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI)")
    ap.add_argument("--no-targets", action="store_true", help="do not fail below the 10x targets")
    args = ap.parse_args()
    rounds = 3 if args.quick else 7
    scale = 0.1 if args.quick else 1.0

    import extism

    # Extism takes binary modules only; the text is assembled with
    # wasmtime-py's wat2wasm.
    from wasmtime import wat2wasm

    ext = extism.Plugin(bytes(wat2wasm(EXTISM_WAT)), wasi=False)
    runtime = shmrt.Runtime()
    echo = runtime.prepare(build_guest("echo")).spawn(name="echo")
    summer = runtime.prepare(build_guest("bench-guest")).spawn(name="sum", execution=os.environ.get("SHMRT_BENCH_EXEC", "fiber"))
    summer.send(b"checksum")

    payload = bytes(range(64))
    assert bytes(ext.call("echo", payload)) == payload

    def shmrt_echo():
        echo.send(payload)
        echo.recv().release()

    rows = [("64 B echo", per_op(shmrt_echo, int(20000 * scale), rounds),
             per_op(lambda: ext.call("echo", payload), int(5000 * scale), rounds))]
    for label, size, n in [("4 KiB numpy sum", 4096, 20000), ("1 MiB numpy sum", 1 << 20, 300)]:
        arr = np.arange(size // 8, dtype=np.uint64)
        want = int(arr.sum(dtype=np.uint64))
        assert int.from_bytes(ext.call("sum", arr.tobytes()), "little") == want
        summer.send(arr)
        with summer.recv() as answer:
            assert int.from_bytes(bytes(answer), "little") == want

        def shmrt_sum():
            summer.send(arr)  # one copy, straight from the array into a slot
            summer.recv().release()

        rows.append((label, per_op(shmrt_sum, max(int(n * scale), 10), rounds),
                     per_op(lambda: ext.call("sum", arr.tobytes()), max(int(n * scale / 4), 5), rounds)))

    print(f"{'':18} {'shmrt':>12} {'extism':>12} {'ratio':>8}")
    ok = True
    for label, s, e in rows:
        ratio = e / s
        ok &= ratio >= 10
        print(f"{label:18} {s * 1e6:10.2f}us {e * 1e6:10.2f}us {ratio:7.1f}x")
    echo.close()
    summer.close()
    if not ok:
        print("below the target of 10x on some row", file=sys.stderr)
        return 0 if args.no_targets else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What `await sandbox.recv_async()` adds over `sandbox.recv()`: a 64-byte
echo round trip (send, receive, release) timed both ways on one sandbox
per execution mode, and 100 sandboxes echoing at once in one asyncio
loop. A measurement to read, not a test.

Run (after `pip install ./bindings/python`):

    python bindings/python/bench_async.py [--rounds N]
"""

import argparse
import asyncio
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "tests"))
from conftest import build_guest  # noqa: E402

import shmrt  # noqa: E402


def per_round(seconds: float, rounds: int) -> str:
    return f"{seconds / rounds * 1e6:8.2f} us"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    n = args.rounds
    plugin = shmrt.Runtime().prepare(build_guest("upper"))
    payload = b"x" * 64
    print(f"64-byte echo round trip, {n} rounds (median of 3 runs)")
    print(f"{'mode':<9} {'recv()':>11} {'recv_async()':>13} {'added':>10}")
    for mode in ["thread", "fiber", "callback"]:
        sb = plugin.spawn(name=f"lat-{mode}", execution=mode)

        def sync_run() -> float:
            t = time.perf_counter()
            for _ in range(n):
                sb.send(payload)
                sb.recv().release()
            return time.perf_counter() - t

        async def async_run() -> float:
            t = time.perf_counter()
            for _ in range(n):
                sb.send(payload)
                (await sb.recv_async()).release()
            return time.perf_counter() - t

        sync_t = sorted(sync_run() for _ in range(3))[1]
        async_t = sorted(asyncio.run(async_run()) for _ in range(3))[1]
        print(
            f"{mode:<9} {per_round(sync_t, n):>11} {per_round(async_t, n):>13} "
            f"{per_round(async_t - sync_t, n):>10}"
        )
        sb.close()

    sandboxes = [plugin.spawn(name=f"many{i}") for i in range(100)]

    async def one(sb, rounds):
        for _ in range(rounds):
            sb.send(payload)
            (await sb.recv_async()).release()

    async def many(rounds):
        t = time.perf_counter()
        await asyncio.gather(*(one(sb, rounds) for sb in sandboxes))
        return time.perf_counter() - t

    rounds = max(1, n // 100)
    total = asyncio.run(many(rounds))
    print(
        f"100 sandboxes ({sandboxes[0].execution}) in one loop, {rounds} echoes each: "
        f"{per_round(total, rounds * 100)} per echo"
    )
    for sb in sandboxes:
        sb.close()


if __name__ == "__main__":
    main()

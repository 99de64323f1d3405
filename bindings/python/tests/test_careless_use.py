"""Hostile and careless uses of Sandbox.reserve and Sandbox.recv_async:
a reservation whose sandbox is stopped or joined from another thread
while a numpy view of it lives, receives cancelled many thousand times,
receives from two event loops. Each ends in a clear exception or works:
never a crash, a hang, or a leak that grows with the count."""

import asyncio
import os
import threading

import numpy as np
import pytest

import shmrt
from test_shmrt import MODES


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("end", ["stop", "join"])
def test_a_view_of_a_reservation_outlives_its_sandbox(plugins, mode, end):
    sb = plugins["upper"].spawn(name="rstop", execution=mode)
    r = sb.reserve(1 << 16)
    view = np.frombuffer(r, dtype=np.uint8)
    # The sandbox ends on another thread while the view lives.
    if end == "stop":
        ender = threading.Thread(target=sb.stop)
    else:
        sb.goodbye()
        ender = threading.Thread(target=lambda: sb.join())
    ender.start()
    ender.join(30)
    assert not ender.is_alive()
    # The memory is still mapped: writing and reading it is harmless.
    view[:] = 9
    assert int(view.sum()) == 9 * (1 << 16)
    with pytest.raises((shmrt.ShmrtError, BufferError)):
        sb.send(r)
    del view
    # Sending to an ended sandbox fails clearly, and the slot is let go.
    with pytest.raises(shmrt.ShmrtError):
        sb.send(r)
    assert r.released
    with pytest.raises(shmrt.Released):
        memoryview(r)


def test_recv_async_cancelled_ten_thousand_times_leaks_nothing(plugins):
    sb = plugins["upper"].spawn(name="acancel10k", execution="thread")

    async def cancel_many(n):
        for _ in range(n):
            waiting = asyncio.ensure_future(sb.recv_async())
            await asyncio.sleep(0)
            waiting.cancel()
            try:
                await waiting
            except asyncio.CancelledError:
                pass

    async def main():
        await cancel_many(2000)  # warm up allocators and caches
        fds, rss = open_fds(), rss_kib()
        await cancel_many(10_000)
        # Nothing grows with the count: no socket or waker kept per receive.
        assert open_fds() <= fds + 2, (fds, open_fds())
        assert rss_kib() - rss < 8 * 1024, (rss, rss_kib())
        sb.send(b"after")
        assert bytes(await sb.recv_async(timeout=30)) == b"AFTER"

    asyncio.run(main())
    assert sb.close() == 0


@pytest.mark.parametrize("mode", MODES)
def test_recv_async_from_two_event_loops(plugins, mode):
    sb = plugins["upper"].spawn(name="atwoloops", execution=mode)
    got = []
    errors = []

    def loop_thread():
        async def one():
            msg = None
            try:
                msg = await sb.recv_async(timeout=10)
                got.append(bytes(msg))
            except Exception as e:  # noqa: BLE001 - reported below
                # The other loop's receive may release this one's message
                # (a sandbox holds one received message at a time): the
                # bytes are then refused, never read after the release.
                errors.append((e, msg is not None))

        asyncio.run(one())

    threads = [threading.Thread(target=loop_thread) for _ in range(2)]
    for t in threads:
        t.start()
    sb.send(b"one")
    sb.send(b"two")
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a receive hung"
    # Each message once, whichever loop took it; a loop whose message the
    # other loop's receive released, or that was refused, says so clearly.
    taken = len(got)
    for e, received in errors:
        if received:
            assert isinstance(e, shmrt.Released), repr(e)
            taken += 1
        else:
            assert isinstance(e, (shmrt.Busy, shmrt.Timeout)), repr(e)
    assert len(set(got)) == len(got)
    assert set(got) <= {b"ONE", b"TWO"}
    rest = [bytes(sb.recv(timeout=5)) for _ in range(2 - taken)]
    assert len(set(got + rest)) == len(got + rest)
    assert set(got + rest) <= {b"ONE", b"TWO"}
    assert sb.close() == 0

"""Sandbox.reserve (a slot as a writable buffer object, sent in place) and
Sandbox.recv_async (asyncio, no thread per sandbox)."""

import asyncio
import random
import time

import numpy as np
import pytest

import shmrt
from test_shmrt import MODES, checksum64

# One class of 8 slots: the host may hold 4 at a time.
EIGHT_SLOTS = [(4092, 8)]


@pytest.mark.parametrize("mode", ["thread", "fiber"])
def test_reserve_a_mebibyte_filled_by_numpy_in_place(plugins, mode):
    sb = plugins["checksum"].spawn(name="rsum", execution=mode)
    base, size = sb.window()
    r = sb.reserve(1 << 20)
    assert len(r) == 1 << 20
    arr = np.frombuffer(r, dtype=np.uint64)
    assert arr.flags.writeable
    # The array is the slot: no copy on the host's side.
    assert arr.__array_interface__["data"][0] == r.address
    assert base <= r.address and r.address + len(r) <= base + size
    arr[:] = np.arange(arr.size, dtype=np.uint64) * 5
    # A live view: nothing is sent, the reservation stays open.
    with pytest.raises(BufferError):
        sb.send(r)
    assert not r.released
    assert sb.try_recv() is None
    del arr
    sb.send(r)
    assert r.sent and r.released
    with sb.recv(timeout=30) as msg:
        line = bytes(msg)
    expected = (np.arange((1 << 20) // 8, dtype=np.uint64) * 5).tobytes()
    assert line == f"{1 << 20} {checksum64(expected):016x}\n".encode()
    for access in [len, memoryview, np.frombuffer, lambda r: r.address]:
        with pytest.raises(shmrt.Released) as info:
            access(r)
        assert info.value.sandbox == "rsum"
    with pytest.raises(shmrt.Released):
        sb.send(r)
    sb.close()


@pytest.mark.parametrize("mode", MODES)
def test_reserve_commits_at_the_with_exit(plugins, mode):
    sb = plugins["upper"].spawn(name="rwith", execution=mode)
    # A few bytes: a slot all the same.
    with sb.reserve(5) as r:
        with memoryview(r) as mv:
            mv[:] = b"hello"
    assert r.sent
    with sb.recv(timeout=30) as msg:
        assert bytes(msg) == b"HELLO"
    with sb.reserve(3000) as r:
        np.frombuffer(r, dtype=np.uint8)[:] = ord("q")
    with sb.recv(timeout=30) as msg:
        assert bytes(msg) == b"Q" * 3000
    assert sb.close() == 0


def test_abandoned_reservations_free_their_slots(plugins):
    sb = plugins["echo"].spawn(name="rgive", slot_classes=EIGHT_SLOTS)
    # Five times as many as the host may hold: each comes back.
    for i in range(20):
        with pytest.raises(RuntimeError):
            with sb.reserve(4000, timeout=5) as r:
                memoryview(r)[:1] = b"x"
                raise RuntimeError("the body failed")
        assert r.released and not r.sent
        r = sb.reserve(4000, timeout=5)
        r.abandon()
        r.abandon()
        with pytest.raises(shmrt.Released):
            len(r)
    assert sb.try_recv() is None
    # Several open at once: the host's share is four.
    held = [sb.reserve(100, timeout=5) for _ in range(4)]
    with pytest.raises(shmrt.Timeout) as info:
        sb.reserve(100, timeout=0.1)
    assert info.value.sandbox == "rgive"
    held.pop().abandon()
    # A reservation given back while a view of it lives keeps its slot
    # until the view goes.
    with pytest.raises(BufferError):
        with sb.reserve(100, timeout=5) as r:
            view = memoryview(r)
    assert r.released and not r.sent
    with pytest.raises(shmrt.Timeout):
        sb.reserve(100, timeout=0.1)
    view.release()
    del view
    last = sb.reserve(100, timeout=5)
    with memoryview(last) as mv:
        mv[:] = b"z" * 100
    sb.send(last)
    with sb.recv(timeout=30) as msg:
        assert bytes(msg) == b"z" * 100
    for r in held:
        r.abandon()
    sb.close()


def test_reservation_of_another_sandbox(plugins):
    a = plugins["echo"].spawn(name="ra")
    b = plugins["echo"].spawn(name="rb")
    r = a.reserve(10)
    memoryview(r)[:] = b"0123456789"
    with pytest.raises(ValueError) as info:
        b.send(r)
    assert "ra" in str(info.value) and "rb" in str(info.value)
    with pytest.raises(TypeError):
        a.try_send(r)
    assert b.try_recv() is None
    assert not r.released
    a.send(r)
    with a.recv(timeout=30) as msg:
        assert bytes(msg) == b"0123456789"
    a.close()
    b.close()


def test_reserve_on_a_dead_sandbox_and_too_large(plugins):
    sb = plugins["upper"].spawn(name="rdead")
    with pytest.raises(shmrt.TooLarge) as info:
        sb.reserve(2 << 20)
    assert info.value.sandbox == "rdead"
    assert "2097152" in str(info.value) and "1048576" in str(info.value)
    outstanding = sb.reserve(64)
    sb.goodbye()
    # The guest ends: a reservation is Closed.
    with pytest.raises(shmrt.Closed):
        while True:
            sb.recv(timeout=30)
    with pytest.raises(shmrt.Closed) as info:
        sb.reserve(8)
    assert info.value.sandbox == "rdead"
    assert sb.join() == 0
    with pytest.raises(shmrt.Joined):
        sb.reserve(8)
    # One outstanding across the join: still writable memory, and its
    # send says the sandbox is gone.
    memoryview(outstanding)[:4] = b"late"
    with pytest.raises(shmrt.Joined):
        sb.send(outstanding)
    assert outstanding.released


@pytest.mark.parametrize("mode", MODES)
def test_recv_async_many_sandboxes_in_one_loop(plugins, mode):
    sandboxes = [plugins["upper"].spawn(name=f"a{i}", execution=mode) for i in range(100)]

    async def one(i, sb):
        for k in range(3):
            sb.send(b"msg %d.%d" % (i, k))
            msg = await sb.recv_async(timeout=30)
            assert bytes(msg) == b"MSG %d.%d" % (i, k)
            msg.release()
        return i

    async def main():
        return await asyncio.gather(*(one(i, sb) for i, sb in enumerate(sandboxes)))

    assert asyncio.run(main()) == list(range(100))
    for sb in sandboxes:
        assert sb.close() == 0


@pytest.mark.parametrize("mode", MODES)
def test_recv_async_cancelled_loses_nothing(plugins, mode):
    sb = plugins["upper"].spawn(name="acancel", execution=mode)

    async def main():
        waiting = asyncio.ensure_future(sb.recv_async())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        sb.send(b"after")
        assert bytes(await sb.recv_async(timeout=30)) == b"AFTER"
        # Timeouts racing arrivals: every message comes out once, in order.
        rng = random.Random(7)
        got = []
        for i in range(200):
            sb.send(b"m%d" % i)
            try:
                msg = await asyncio.wait_for(sb.recv_async(), timeout=rng.choice([0, 1e-5, 1e-4]))
                got.append(bytes(msg))
            except TimeoutError:
                pass
        while len(got) < 200:
            got.append(bytes(await sb.recv_async(timeout=30)))
        assert got == [b"M%d" % i for i in range(200)]
        # The sandbox is usable after all that.
        sb.send(b"end")
        assert bytes(await sb.recv_async(timeout=30)) == b"END"

    asyncio.run(main())
    assert sb.close() == 0


def test_recv_async_timeout_closed_and_no_loop(plugins):
    sb = plugins["echo"].spawn(name="atime", execution="thread")

    async def main():
        started = time.monotonic()
        with pytest.raises(shmrt.Timeout) as info:
            await sb.recv_async(timeout=0.1)
        assert 0.05 <= time.monotonic() - started < 5
        assert info.value.sandbox == "atime"
        assert isinstance(info.value, TimeoutError)
        # The timed-out receive left the sandbox usable.
        sb.send(b"still here")
        assert bytes(await sb.recv_async(timeout=30)) == b"still here"
        sb.goodbye()
        with pytest.raises(shmrt.Closed):
            await sb.recv_async(timeout=30)

    asyncio.run(main())
    with pytest.raises(RuntimeError):
        sb.recv_async()
    assert sb.join() == 0


def test_recv_async_message_is_the_guests_bytes_in_place(plugins):
    sb = plugins["echo"].spawn(name="aplace")
    base, size = sb.window()

    async def main():
        data = np.arange(1 << 17, dtype=np.float64)
        sb.send(data)
        msg = await sb.recv_async(timeout=30)
        view = np.frombuffer(msg, dtype=np.float64)
        assert base <= msg.address < base + size
        assert np.array_equal(view, data)
        # Held with a live view: the next receive refuses, as recv does.
        with pytest.raises(BufferError):
            await sb.recv_async(timeout=1)
        del view
        msg.release()

    asyncio.run(main())
    sb.close()

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shmrt

MODES = ["thread", "fiber", "callback"]


def checksum64(data: bytes) -> int:
    """primitives/src/checksum.rs, to check the checksum plugin's answer."""
    m = (1 << 64) - 1
    k = 0x9E3779B97F4A7C15

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & m

    lanes = [k, rotl(k, 16), rotl(k, 32), rotl(k, 48)]
    words = np.frombuffer(data[: len(data) // 32 * 32], dtype="<u8").reshape(-1, 4)
    for row in words.tolist():
        for i in range(4):
            lanes[i] = rotl(((lanes[i] ^ row[i]) * k) & m, 29)
    h = lanes[0] ^ rotl(lanes[1], 7) ^ rotl(lanes[2], 13) ^ rotl(lanes[3], 19)
    for b in data[len(data) // 32 * 32 :]:
        h = ((h ^ b) * k) & m
    return ((((h ^ len(data)) * k) & m) ^ (h >> 31)) & m


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_in_every_mode(plugins, mode):
    sb = plugins["upper"].spawn(name=f"upper-{mode}", execution=mode)
    assert sb.execution == mode
    for payload in [b"hello", b"x" * 5000, bytearray(b"slot" * 20000)]:
        sb.send(payload)
        with sb.recv(timeout=30) as msg:
            assert bytes(msg) == bytes(payload).upper()
    assert sb.close() == 0


# The checksum plugin is a blocking loop: no callback mode.
@pytest.mark.parametrize("mode", ["thread", "fiber"])
def test_mebibyte_array_written_and_read_in_place(plugins, mode):
    sb = plugins["checksum"].spawn(name="sum", execution=mode)
    base, size = sb.window()
    seen = {}

    def fill(view):
        arr = np.frombuffer(view, dtype=np.uint64)
        # The array is the slot: written where the plugin reads it.
        seen["address"] = arr.__array_interface__["data"][0]
        arr[:] = np.arange(arr.size, dtype=np.uint64) * 3
        del arr

    sb.send_with(1 << 20, fill)
    assert base <= seen["address"] < base + size
    with sb.recv(timeout=30) as msg:
        assert base <= msg.address < base + size
        line = bytes(msg)
    expected = (np.arange((1 << 20) // 8, dtype=np.uint64) * 3).tobytes()
    assert line == f"{1 << 20} {checksum64(expected):016x}\n".encode()
    sb.close()


def test_received_message_is_a_buffer_in_the_window(plugins):
    sb = plugins["echo"].spawn(name="echo")
    base, size = sb.window()
    data = np.arange(4096, dtype=np.float64)
    sb.send(data)
    msg = sb.recv(timeout=30)
    view = np.frombuffer(msg, dtype=np.float64)
    assert view.__array_interface__["data"][0] == msg.address
    assert base <= msg.address < base + size
    assert np.array_equal(view, data)
    assert not view.flags.writeable
    with pytest.raises(BufferError):
        msg.release()
    with pytest.raises(BufferError):
        sb.recv(timeout=1)
    del view
    msg.release()
    sb.close()


def test_views_after_release_raise(plugins):
    sb = plugins["echo"].spawn(name="echo")
    sb.send(b"abc")
    msg = sb.recv(timeout=30)
    mv = memoryview(msg)
    assert mv.tobytes() == b"abc"
    mv.release()
    msg.release()
    assert msg.released
    for access in [bytes, len, memoryview, np.frombuffer, lambda m: m.address]:
        with pytest.raises(shmrt.Released):
            access(msg)
    # The next recv releases the one before.
    sb.send(b"one")
    sb.send(b"two")
    first = sb.recv(timeout=30)
    second = sb.recv(timeout=30)
    with pytest.raises(shmrt.Released) as info:
        bytes(first)
    assert info.value.sandbox == "echo"
    assert bytes(second) == b"two"
    sb.close()
    with pytest.raises(shmrt.Released):
        bytes(second)


def test_reply_in_place(plugins):
    sb = plugins["echo"].spawn(name="echo")
    sb.send(b"ping" * 1000)
    msg = sb.recv(timeout=30)

    def transform(view):
        mv = memoryview(view)
        mv[:4] = b"PONG"
        mv.release()
        return 4

    msg.reply_in_place(transform)
    with pytest.raises(shmrt.Released):
        bytes(msg)
    with sb.recv(timeout=30) as back:
        assert bytes(back) == b"PONG"
    sb.close()


def test_dead_sandbox(plugins):
    sb = plugins["upper"].spawn(name="dead")
    sb.goodbye()
    assert sb.join() == 0
    with pytest.raises(shmrt.Joined) as info:
        sb.send(b"x")
    assert info.value.sandbox == "dead"
    with pytest.raises(shmrt.Joined):
        sb.recv(timeout=0.1)
    with pytest.raises(shmrt.Joined):
        sb.join()


def test_stopped_sandbox(plugins):
    sb = plugins["echo"].spawn(name="stopme", execution="thread")
    sb.stop()
    with pytest.raises((shmrt.Stopped, shmrt.Closed)):
        sb.recv(timeout=10)
    with pytest.raises(shmrt.Stopped):
        sb.join()


def test_wrong_types_and_oversized(plugins, runtime):
    sb = plugins["upper"].spawn(name="types")
    with pytest.raises(TypeError):
        sb.send("a str is not bytes")
    with pytest.raises(TypeError):
        sb.send(42)
    with pytest.raises(ValueError):
        plugins["upper"].spawn(execution="sideways")
    with pytest.raises(shmrt.TooLarge) as info:
        sb.send(bytes(2 << 20))
    assert info.value.sandbox == "types"
    with pytest.raises(shmrt.RefusedModule):
        runtime.prepare(b"not wasm at all")
    with pytest.raises(TypeError):
        runtime.prepare(3.5)
    with pytest.raises(shmrt.Timeout):
        sb.recv(timeout=0.05)
    assert issubclass(shmrt.Timeout, TimeoutError)
    sb.close()


def test_calls_config_and_host_functions(plugins):
    calls = []

    def kv_get(key):
        calls.append(key)
        if key == b"user:42":
            return b"Ada Lovelace"
        raise KeyError(key)

    for mode in MODES:
        sb = plugins["text-tools"].spawn(
            name="tools",
            execution=mode,
            config={"greeting": "Bonjour"},
            host_functions={"kv_get": kv_get},
        )
        assert sb.call("greet", b"Grace") == b"Bonjour, Grace!"
        assert sb.call("lookup", b"user:42") == b"Ada Lovelace"
        with pytest.raises(shmrt.PluginError) as info:
            sb.call("lookup", b"user:7")
        assert "KeyError" in str(info.value)
        with pytest.raises(shmrt.PluginError) as info:
            sb.call("no_such_function", b"")
        assert info.value.code < 0
        sb.close()
    assert len(calls) == 6


def test_a_thousand_sandboxes(plugins):
    sandboxes = [plugins["upper"].spawn(name=f"s{i}") for i in range(1000)]
    for i, sb in enumerate(sandboxes):
        sb.send(b"n%d" % i)
    for i, sb in enumerate(sandboxes):
        with sb.recv(timeout=30) as msg:
            assert bytes(msg) == b"N%d" % i
    for sb in sandboxes:
        assert sb.close() == 0


def test_ctrl_c_interrupts_a_blocking_recv(plugins, tmp_path):
    from conftest import build_guest

    script = tmp_path / "block.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import signal, sys, shmrt
            # Python raises KeyboardInterrupt only if SIGINT was not
            # ignored when it started; a runner started in the background
            # (nohup, `cmd &` in a script) passes it on ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sb = shmrt.Runtime().prepare({build_guest("echo")!r}).spawn(execution="thread")
            try:
                # Inside the try: a signal that comes before recv starts
                # is caught all the same.
                print("ready", flush=True)
                sb.recv()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(0)
            """
        )
    )
    # faulthandler: a child that does not end says where it is (SIGABRT
    # below dumps every thread's Python stack to stderr).
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        threads = threads_of(proc.pid)
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        pytest.fail(
            f"Ctrl-C did not end a blocking recv within 30 s.\nthreads (name, state, "
            f"kernel wait, syscall):\n{threads}\nstdout: {out!r}\nstderr:\n{err}"
        )
    assert "interrupted" in out, err
    assert proc.returncode == 0, err


def threads_of(pid: int) -> str:
    """Each thread of `pid`: its name, state, kernel wait channel and
    syscall, from /proc (what a hang is waiting on)."""
    lines = []
    for task in sorted(pathlib.Path(f"/proc/{pid}/task").iterdir()):
        def read(name: str) -> str:
            try:
                return (task / name).read_text().strip()
            except OSError as e:
                return f"({e.strerror})"
        state = read("stat").rsplit(")", 1)[-1].split()[:1]
        lines.append(
            f"  {task.name} {read('comm')} {' '.join(state)} {read('wchan')} {read('syscall')}"
        )
    return "\n".join(lines)

"""Plugins for the tests, built from source once (as the Rust tests do):
`SHMRT_GUEST_DIR` may name a directory that holds them already."""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def build_guest(example: str) -> str:
    target = ROOT / "target" / "guests"
    out = subprocess.run(
        ["cargo", "build", "--release", "--message-format=json"],
        cwd=ROOT / "examples" / example,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    wasm = [
        f
        for line in out.splitlines()
        if line.startswith(b"{")
        for msg in [json.loads(line)]
        if msg.get("reason") == "compiler-artifact"
        for f in msg.get("filenames", [])
        if f.endswith(".wasm")
    ]
    return wasm[-1]


@pytest.fixture(scope="session")
def runtime():
    import shmrt

    return shmrt.Runtime()


@pytest.fixture(scope="session")
def plugins(runtime):
    return {
        name: runtime.prepare(build_guest(name))
        for name in ["upper", "echo", "checksum", "text-tools"]
    }

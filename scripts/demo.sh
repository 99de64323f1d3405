#!/usr/bin/env bash
# Sets everything up on a fresh machine (wasm targets, a release build of
# shmrt) and runs the main job end to end: plugins built from source with
# `shmrt build`, run with `shmrt run`, and a native program embedding the
# runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown wasm32-wasip1
# One cargo invocation builds everything the demo runs: separate invocations
# unify features differently and would compile wasmtime once each. A target
# selection flag limits the build to the targets it names, so the binary is
# named too. The README's build command is this one, so that a user who ran
# the demo compiles nothing again.
cargo build --release --locked -p shmrt-cli -p shmrt --bin shmrt --examples
shmrt=target/release/shmrt

echo "== upper: printf 'hello\nworld\n' | shmrt run \$(shmrt build examples/upper)"
printf 'hello\nworld\n' | "$shmrt" run "$("$shmrt" build examples/upper)"

echo "== checksum: 3 MB of random bytes in 1 MiB slots, checksummed in place"
head -c 3000000 /dev/urandom | "$shmrt" run --framing raw --chunk 1MiB "$("$shmrt" build examples/checksum)"

echo "== echo: 3 MB through --framing raw, compared byte for byte"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 3000000 /dev/urandom > "$tmp/in"
"$shmrt" run --framing raw "$("$shmrt" build examples/echo)" < "$tmp/in" > "$tmp/out"
cmp "$tmp/in" "$tmp/out" && echo "byte-exact"

echo "== embed: a native program that embeds the runtime"
target/release/examples/embed "$("$shmrt" build examples/upper)"

echo "== calls-host: calls by name, configuration, a host function, four threads calling at once"
target/release/examples/calls-host "$("$shmrt" build examples/text-tools)"

echo "== attach: a native host process and the plugin sandboxed in another, one segment file"
target/release/examples/attach-host "$shmrt" "$("$shmrt" build examples/checksum)"

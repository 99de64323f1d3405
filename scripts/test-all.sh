#!/usr/bin/env bash
# Runs every test of the workspace. Needs rustup and cargo; as root on Debian
# it installs the rest (Zig, the shim's libseccomp-dev, protobuf-compiler,
# pkg-config, containerd and runc for its tests).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown wasm32-wasip1
rustup component add clippy rustfmt || echo "note: could not add clippy/rustfmt with rustup; using the installed ones"

step() { printf '\n== %s\n' "$*"; }

# Zig builds the C and Zig plugins (tests/c_and_zig_guests.rs); pip's
# package works offline once installed. Debian's pip may refuse without
# --break-system-packages: try both.
if ! python3 -m ziglang version >/dev/null 2>&1; then
    python3 -m pip install --user ziglang ||
        python3 -m pip install --user --break-system-packages ziglang ||
        echo "note: could not install Zig; the C and Zig guest tests will say SKIPPED"
fi

# The containerd shim (shim/, on runwasi's containerd-shim-wasm) links
# libseccomp (youki's libcontainer) and generates containerd's API bindings
# with protoc when it builds: Debian's packages, installed as root.
if ! pkg-config --exists libseccomp 2>/dev/null || ! command -v protoc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y libseccomp-dev protobuf-compiler pkg-config ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libseccomp-dev protobuf-compiler pkg-config; }
    else
        echo "the workspace's build needs libseccomp-dev, protobuf-compiler and pkg-config (the containerd shim): install them, e.g. sudo apt-get install libseccomp-dev protobuf-compiler pkg-config"
        exit 1
    fi
fi

# A test run needs about 4 GiB of disk (2.6 GiB measured from a clean clone
# before the Miri step and six more test binaries); say what there is, so
# that a full disk is told apart from a failing test.
df -h . | tail -1 | awk '{print "disk: " $4 " free of " $2}'
# Incremental caches only help edit-compile loops; here they would take space.
export CARGO_INCREMENTAL=0

step "doc links (README, CHANGELOG, docs/)"
./scripts/check-doc-links.sh

step "format"
cargo fmt --all -- --check
# The guest crates, examples and fuzz targets are crates of their own.
for manifest in examples/*/Cargo.toml runtime/tests/guests/*/Cargo.toml guest-sdk/c/Cargo.toml fuzz/Cargo.toml; do
    cargo fmt --check --manifest-path "$manifest"
done

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The guest crates build for wasm32 with the flags in their own
# .cargo/config.toml (their libraries only: no_std crates have no test
# harness there).
for dir in examples/bench-guest examples/checksum examples/echo examples/text-tools examples/upper \
    runtime/tests/guests/probe runtime/tests/guests/slow-handler runtime/tests/guests/std-echo \
    runtime/cli/tests/guests/lines-probe; do
    (cd "$dir" && CARGO_TARGET_DIR="$OLDPWD/target/guests-clippy" cargo clippy -- -D warnings)
done
# The SDK's C ABI: for wasm32 (what plugins link) and on the host (its
# unit tests of the handle table, run here too).
(cd guest-sdk/c && CARGO_TARGET_DIR="$OLDPWD/target/guests-clippy" cargo clippy --target wasm32-unknown-unknown -- -D warnings)
(cd guest-sdk/c && CARGO_TARGET_DIR="$OLDPWD/target/guests-clippy" cargo clippy --all-targets -- -D warnings)
(cd guest-sdk/c && CARGO_TARGET_DIR="$OLDPWD/target/guests-clippy" cargo test)
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --target-dir target/fuzz-clippy -- -D warnings

step "unit, integration, compatibility and property tests (guests are built from source)"
cargo test --workspace --locked

step "the embedding example"
# `cargo test` built both with the workspace's features; `cargo run` here
# would build wasmtime twice more (the binary alone and the example alone
# each unify other features).
target/debug/examples/embed "$(target/debug/shmrt build examples/upper)"
target/debug/examples/many "$(target/debug/shmrt build examples/echo)" --count 200 --rounds 3
target/debug/examples/calls-host "$(target/debug/shmrt build examples/text-tools)"

step "containerd: the shim runs plugins under a private containerd (root; installs containerd and runc)"
# Uses the shim, shmrt and attach-host that `cargo test` built.
./scripts/test-containerd.sh

step "no_std builds for wasm32"
cargo build -p shmrt-primitives --target wasm32-unknown-unknown
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory" \
    cargo build -p shmrt-primitives -p shmrt-guest --target wasm32-unknown-unknown

step "loom models"
# `--cfg loom` selects the models' code, the `loom` feature brings the crate
# (a feature, so that plugins never resolve loom).
RUSTFLAGS="--cfg loom" cargo test -p shmrt-primitives --features loom --test loom_models --release --target-dir target/loom

step "Miri over the primitives' tests (nightly; skipped when none can be installed)"
# A machine that cannot get a nightly with Miri goes on; UB that Miri finds
# fails the run. `--allow-downgrade` takes the newest nightly that ships
# Miri; `--no-self-update` leaves rustup itself alone. The tests cut their
# cases under cfg(miri): about 3 minutes on 2 cores, plus about 1 for the
# toolchain and Miri's sysroot. Strict provenance: no integer-to-pointer
# casts. Isolation is off because proptest reads the working directory and
# the `*.proptest-regressions` files: the kept counterexamples are replayed
# under Miri too.
if {
    timeout 600 rustup toolchain install nightly --profile minimal --component miri,rust-src \
        --allow-downgrade --no-self-update ||
        { echo "note: no nightly installed or updated; trying the one already here" && cargo +nightly miri --version; }
} && timeout 600 cargo +nightly miri setup; then
    status=0
    MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-disable-isolation" timeout 900 \
        cargo +nightly miri test -p shmrt-primitives --target-dir target/miri || status=$?
    if [ "$status" = 124 ]; then
        echo "Miri took over 15 minutes (about 3 expected): failing rather than waiting"
    fi
    [ "$status" = 0 ] || exit "$status"
else
    echo "skipped: no nightly toolchain with the miri and rust-src components could be installed and set up"
fi

step "fuzz smoke runs (cargo-fuzz on stable: RUSTC_BOOTSTRAP=1, no sanitizer)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
(
    cd fuzz
    for target in frame_parse host_readers segment_open; do
        log="target/smoke-$target.log"
        mkdir -p target
        if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none -- \
            -runs=300000 -dict=segment_open.dict > "$log" 2>&1; then
            tail -40 "$log"
            echo "fuzz target $target failed"
            exit 1
        fi
        grep -E "^Done" "$log"
    done
)

step "packaging: the publishable crates package and build from their packages"
# shmrt-cli is installed from the source tree (`publish = false`: its build
# embeds the bench guest from examples/); the bindings are built from it
# too (`publish = false`: the C library and the Python wheel are their
# packages). Verification builds each package
# alone, from what it ships.
# The verification builds our crates as if they came from a registry, and
# cargo never looks again at a registry crate it built: one built by an
# earlier run with the same version would be taken, stale. So those builds
# go first (on a fresh machine there are none).
cargo clean -p shmrt-primitives -p shmrt -p shmrt-guest
# Cargo also unpacks each package of its temporary registry under
# $CARGO_HOME/registry/src/<hash of the registry's path>/ and never unpacks
# again over a directory it finished: a CARGO_HOME kept from an earlier run
# in the same checkout path would hand the verification stale sources (CI
# failed so: a module added since was "not found"). No crate of ours is on
# crates.io, so every such directory came from a packaging run: remove them.
for crate in shmrt-primitives shmrt shmrt-guest; do
    rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$crate"-[0-9]*
done
cargo package --workspace --exclude shmrt-cli --exclude shmrt-capi --exclude shmrt-python \
    --exclude containerd-shim-shmrt --locked

step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "C and Python hosts (bindings/)"
./scripts/test-bindings.sh

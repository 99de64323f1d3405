#!/usr/bin/env bash
# Runs every test of the workspace. Needs only rustup and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown wasm32-wasip1
rustup component add clippy rustfmt

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "unit, integration, compatibility and property tests (guests are built from source)"
cargo test --workspace

step "the embedding example"
cargo run -q -p shmrt --example embed -- "$(cargo run -q -p shmrt -- build examples/upper)"

step "no_std builds for wasm32"
cargo build -p shmrt-primitives --target wasm32-unknown-unknown
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory" \
    cargo build -p shmrt-primitives -p shmrt-guest --target wasm32-unknown-unknown

step "loom models"
RUSTFLAGS="--cfg loom" cargo test -p shmrt-primitives --test loom_models --release --target-dir target/loom

step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

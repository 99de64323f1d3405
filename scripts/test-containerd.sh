#!/usr/bin/env bash
# containerd-shim-shmrt-v1 under a real containerd: a private containerd
# (config, root, state and socket in a temporary directory, stopped by its
# pid at the end) runs wasm OCI images written here with
# `ctr run --runtime io.containerd.shmrt.v1`:
#   1. the upper plugin: its output checked;
#   2. a runc container running a native host (attach-host --wait) and the
#      checksum plugin in a shmrt container attached to its segment on a
#      shared tmpfs directory: the host checks every checksum;
#   3. a killed task: no segment file and no process left behind;
#   4. an image without a wasm layer and a module without atomics: each
#      fails, with its reason on the task's stderr.
# Needs root (containerd, runc, mounts). Installs containerd and runc with
# apt-get when missing. Uses the binaries `cargo test --workspace` built
# (target/debug: the shim, shmrt, examples/attach-host), building them the
# same way if missing.
#
# Not root, or no containerd to be had: says so loudly and exits 0 unless
# SHMRT_REQUIRE_CONTAINERD=1 (CI sets it), then 1. A test that runs and
# fails always fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

not_run() {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    printf '!!! containerd tests NOT RUN: %s\n' "$*"
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    [ "${SHMRT_REQUIRE_CONTAINERD:-0}" = 1 ] && exit 1
    exit 0
}

[ "$(id -u)" = 0 ] || not_run "they need root (containerd, runc and mounts)"
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || ! command -v ctr >/dev/null; then
    if command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y containerd runc ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y containerd runc; } ||
            not_run "apt-get could not install containerd and runc"
    else
        not_run "no containerd, runc and ctr, and no apt-get to install them"
    fi
fi

bin=target/debug
if [ ! -x $bin/containerd-shim-shmrt-v1 ] || [ ! -x $bin/shmrt ] || [ ! -x $bin/examples/attach-host ]; then
    # The feature set of test-all's `cargo test --workspace`: no other
    # wasmtime build.
    cargo test --workspace --locked --no-run
fi
shmrt=$repo/$bin/shmrt
upper=$("$shmrt" build examples/upper)
checksum=$("$shmrt" build examples/checksum)

tmp=$(mktemp -d /tmp/shmrt-containerd.XXXXXX)
ns=shmrt-test-$$
containerd_pid=
cleanup() {
    # Only the script's own shell (not a $(...) that exits).
    [ "$BASHPID" = "$$" ] || return 0
    set +e
    if [ -n "$containerd_pid" ]; then
        for c in $(ctr_ containers ls -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1
            ctr_ tasks delete -f "$c" >/dev/null 2>&1
            ctr_ containers delete "$c" >/dev/null 2>&1
        done
        kill "$containerd_pid" 2>/dev/null
        wait "$containerd_pid" 2>/dev/null
    fi
    # Whatever containerd left mounted under its root (snapshots), then
    # the shared tmpfs.
    grep -o " $tmp/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$tmp" "/run/containerd/shmrt/$ns"
}
trap cleanup EXIT

# containerd finds the shim of runtime io.containerd.shmrt.v1 on its PATH.
mkdir -p "$tmp/bin"
ln -s "$repo/$bin/containerd-shim-shmrt-v1" "$tmp/bin/containerd-shim-shmrt-v1"
cat >"$tmp/config.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
[debug]
  level = "info"
EOF
PATH="$tmp/bin:$PATH" containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
# ctr on this containerd, a command (so that `timeout` can run it too).
printf '#!/bin/sh\nexec ctr --address "%s" -n "%s" "$@"\n' "$tmp/containerd.sock" "$ns" >"$tmp/bin/ctr_"
chmod +x "$tmp/bin/ctr_"
export PATH="$tmp/bin:$PATH"
for _ in $(seq 100); do
    ctr_ version >/dev/null 2>&1 && break
    kill -0 "$containerd_pid" 2>/dev/null || { tail -30 "$tmp/containerd.log"; not_run "containerd did not start (its log is above)"; }
    sleep 0.1
done
ctr_ version >/dev/null || not_run "containerd did not answer on $tmp/containerd.sock within 10 s"
echo "containerd $(containerd --version | awk '{print $3}') started (pid $containerd_pid) in $tmp"

fail() {
    echo "FAILED: $*"
    echo "--- containerd's log (last 40 lines):"
    tail -40 "$tmp/containerd.log"
    exit 1
}

# Imports a wasm image written by oci-wasm-image.py. containerd before
# 1.6.25 / 1.7.7 cannot unpack a layer that is not a tar; the image's
# snapshot is what `ctr run` needs of it, and for a wasm layer it is
# empty: made here when the import did not make it.
import_image() { # NAME ENTRYPOINT oci-wasm-image.py-flags...
    local name=$1 tar="$tmp/image-$RANDOM.tar" diff_id
    diff_id=$(python3 scripts/oci-wasm-image.py "$tar" "$@")
    if ! ctr_ images import --all-platforms "$tar" >"$tmp/import.log" 2>&1; then
        grep -q "no processor for media-type" "$tmp/import.log" || { cat "$tmp/import.log"; fail "ctr images import $name"; }
        # An older containerd: the content is in, the layer not unpacked.
        ctr_ images import --all-platforms --no-unpack "$tar" >/dev/null
        local key="import-$RANDOM"
        ctr_ snapshots prepare "$key" "" >/dev/null
        ctr_ snapshots commit "$diff_id" "$key"
    fi
}

run_plugin() { # NAME ID [ctr run flags...] -- reads stdin
    local name=$1 id=$2
    shift 2
    ctr_ run --rm --runtime io.containerd.shmrt.v1 "$@" "$name" "$id"
}

echo
echo "== 1. the upper plugin in a shmrt container"
import_image docker.io/shmrt/upper:test /upper.wasm --wasm "$upper"
out=$(printf 'hello\nzero copy\n' | run_plugin docker.io/shmrt/upper:test "upper-$$" 2>"$tmp/upper.err") ||
    { cat "$tmp/upper.err"; fail "the upper plugin's run failed"; }
[ "$out" = "$(printf 'HELLO\nZERO COPY')" ] || { cat "$tmp/upper.err"; fail "upper's output: '$out'"; }
echo "ok: upper answered HELLO / ZERO COPY through the container's fifos"
# The container's memory limit is the guest's budget, read from the
# cgroup filesystem that Kubernetes mounts in containers (ctr's default
# spec has none: mounted here as the CRI does, read-only).
out=$(echo budget | run_plugin docker.io/shmrt/upper:test "upper-limit-$$" --memory-limit 268435456 \
    --mount type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev 2>"$tmp/upper.err") ||
    { cat "$tmp/upper.err"; fail "the upper plugin's run with a memory limit failed"; }
[ "$out" = BUDGET ] || fail "upper's output with a memory limit: '$out'"
grep -q -- 'running shmrt.*max-memory.\{1,8\}268435456' "$tmp/containerd.log" ||
    fail "the container's memory limit (256 MiB) did not become the plugin's --max-memory"
echo "ok: the container's memory limit of 256 MiB is the plugin's --max-memory"

echo
echo "== 2. a native host in another container, the checksum plugin attached from a shmrt container"
# The directory both containers mount: a tmpfs, as a pod's emptyDir with
# medium Memory.
shared="$tmp/shared"
mkdir -p "$shared"
mount -t tmpfs -o size=64m shmrt-test "$shared"
# The host's root filesystem: attach-host and the libraries it loads.
hostfs="$tmp/hostfs"
mkdir -p "$hostfs"
cp "$repo/$bin/examples/attach-host" "$hostfs/attach-host"
for lib in $(ldd "$hostfs/attach-host" | grep -o '/[^ ]*'); do
    cp --parents -L "$lib" "$hostfs"
done
import_image docker.io/shmrt/checksum:test /checksum.wasm --wasm "$checksum"
share="type=bind,src=$shared,dst=/shared,options=rbind:rw"
# The host in runc, then as a pod of the shmrt runtime class runs it: in
# the shim's Linux container (an ELF entry point).
for host_runtime in io.containerd.runc.v2 io.containerd.shmrt.v1; do
    echo "-- the native host's runtime: $host_runtime"
    # (--rootfs: the first argument is the root filesystem's directory.)
    ctr_ run --rm --runtime "$host_runtime" --mount "$share" --rootfs "$hostfs" "native-host-$$-${host_runtime##*.containerd.}" /attach-host --wait /shared/segment \
        >"$tmp/host.out" 2>&1 &
    host=$!
    for _ in $(seq 100); do
        [ -e "$shared/segment" ] && break
        sleep 0.1
done
[ -e "$shared/segment" ] || { cat "$tmp/host.out"; fail "the native host made no segment in the shared directory"; }
"$shmrt" inspect "$shared/segment" >"$tmp/inspect.out" 2>&1 || { cat "$tmp/inspect.out"; fail "shmrt inspect of the host's segment"; }
status=0
timeout 120 ctr_ run --rm --runtime io.containerd.shmrt.v1 --mount "$share" \
    --env SHMRT_ATTACH=/shared/segment --env SHMRT_PEER=1 \
    docker.io/shmrt/checksum:test "checksum-$$-${host_runtime##*.containerd.}" </dev/null >"$tmp/plugin.out" 2>&1 || status=$?
host_status=0
wait "$host" || host_status=$?
cat "$tmp/host.out"
[ "$status" = 0 ] || { cat "$tmp/plugin.out"; fail "the attached plugin's container exited with $status"; }
[ "$host_status" = 0 ] || fail "the native host exited with $host_status"
grep -q "checksummed in place by the plugin" "$tmp/host.out" || fail "the host did not verify the plugin's checksums"
[ ! -e "$shared/segment" ] || fail "the host's segment is still there after both ended"
echo "ok: 33 payloads of 256 KiB written by the native container, checksummed in place by the plugin, every checksum matched"

done

echo
echo "== 3. a killed task leaves no segment and no process behind"
task_pid() { ctr_ tasks ls | awk -v id="$1" '$1 == id {print $2}'; }
# A plugin with its segment named in the shared directory, fed by a fifo
# that stays open: it runs until it is killed.
kill_test() { # SIGNAL ID [--env ...]
    local signal=$1 id=$2
    shift 2
    rm -f "$tmp/in"
    mkfifo "$tmp/in"
    exec 7<>"$tmp/in"
    ctr_ run --rm --runtime io.containerd.shmrt.v1 --mount "$share" \
        --env SHMRT_SEGMENT=/shared/plugin.seg "$@" \
        docker.io/shmrt/upper:test "$id" <"$tmp/in" >"$tmp/kill.out" 2>&1 &
    local ctr_pid=$! pid=
    echo ping >&7
    for _ in $(seq 200); do
        pid=$(task_pid "$id")
        [ -n "$pid" ] && [ -e "$shared/plugin.seg" ] && grep -q PING "$tmp/kill.out" && break
        sleep 0.1
    done
    grep -q PING "$tmp/kill.out" || { cat "$tmp/kill.out"; fail "$id did not answer"; }
    [ -e "$shared/plugin.seg" ] || fail "$id made no segment file"
    kill -0 "$pid" || fail "$id's process $pid is not there"
    if [ "$signal" = SIGTERM ] && [ -z "${measured:-}" ]; then
        measured=1
        local shim_kib
        shim_kib=$(pgrep -f -- "-id $id( |$)" | grep -vx "$pid" | xargs -r ps -o rss= -p | awk '{s += $1} END {print s}')
        echo "memory (measured): the plugin's process $(ps -o rss= -p "$pid" | tr -d ' ') KiB resident, its shim's processes $shim_kib KiB ($(basename "$bin") build)"
    fi
    ctr_ tasks kill -s "$signal" "$id"
    local status=0
    timeout 30 tail --pid="$ctr_pid" -f /dev/null || fail "$id still runs 30 s after $signal"
    wait "$ctr_pid" || status=$?
    exec 7>&-
    killed_status=$status
    ! kill -0 "$pid" 2>/dev/null || fail "$id's process $pid is still there after $signal"
    ! pgrep -f -- "-id $id( |$)" >/dev/null || fail "a shim of $id is still running after $signal"
}
kill_test SIGTERM "killed-$$"
[ "$killed_status" = 143 ] || { cat "$tmp/kill.out"; fail "SIGTERM: exit status $killed_status, expected 143 (shmrt run's, as a shell's)"; }
[ ! -e "$shared/plugin.seg" ] || fail "SIGTERM left the plugin's segment file behind"
echo "ok: SIGTERM: status 143, the segment file removed, no process left"
kill_test SIGKILL "killed9-$$"
# Nobody could remove it: shmrt inspect calls it stale, and a run that
# may replace stale segments takes its place.
status=0
"$shmrt" inspect "$shared/plugin.seg" >"$tmp/inspect.out" 2>&1 || status=$?
[ "$status" = 4 ] && grep -qi stale "$tmp/inspect.out" || { cat "$tmp/inspect.out"; fail "shmrt inspect of the SIGKILLed plugin's segment: status $status"; }
kill_test SIGTERM "replaced-$$" --env SHMRT_REPLACE_STALE=1
[ ! -e "$shared/plugin.seg" ] || fail "the run that replaced the stale segment left it behind"
echo "ok: SIGKILL: no process left; its segment is stale for shmrt inspect and the next run (SHMRT_REPLACE_STALE=1) replaced it"

echo
echo "== 4. refused images fail with their reason in the task's log"
echo "not a module" >"$tmp/readme.txt"
import_image docker.io/shmrt/no-wasm:test /upper.wasm --file "/readme.txt=$tmp/readme.txt"
status=0
timeout 60 ctr_ run --rm --runtime io.containerd.shmrt.v1 docker.io/shmrt/no-wasm:test "no-wasm-$$" \
    </dev/null >"$tmp/no-wasm.out" 2>&1 || status=$?
[ "$status" != 0 ] || fail "an image without a wasm layer ran"
grep -q "the image has no wasm layer" "$tmp/no-wasm.out" || { cat "$tmp/no-wasm.out"; fail "no reason given for the image without a wasm layer"; }
echo "ok: no wasm layer: $(grep -o 'the image has no wasm layer[^:]*' "$tmp/no-wasm.out" | head -1)"
# (module (import "shmrt" "ring" (func)) (memory 1)): imports shmrt, no
# atomics.
printf '\x00asm\x01\x00\x00\x00\x01\x04\x01\x60\x00\x00\x02\x0e\x01\x05shmrt\x04ring\x00\x00\x05\x03\x01\x00\x01' \
    >"$tmp/no-atomics.wasm"
import_image docker.io/shmrt/no-atomics:test /no-atomics.wasm --wasm "$tmp/no-atomics.wasm"
status=0
timeout 60 ctr_ run --rm --runtime io.containerd.shmrt.v1 docker.io/shmrt/no-atomics:test "no-atomics-$$" \
    </dev/null >"$tmp/no-atomics.out" 2>&1 || status=$?
[ "$status" = 65 ] || { cat "$tmp/no-atomics.out"; fail "a module without atomics: status $status, expected 65 (shmrt run's, invalid module)"; }
grep -q "contains no atomic instruction" "$tmp/no-atomics.out" || { cat "$tmp/no-atomics.out"; fail "no reason given for the module without atomics"; }
echo "ok: no atomics: status 65, $(grep -o 'contains no atomic instruction[^;]*' "$tmp/no-atomics.out" | head -1)"

echo
echo "== 5. time to the first answer: ctr run (shmrt runtime) against shmrt run (measured, not checked)"
python3 - "$shmrt" "$upper" <<'PY'
import statistics, subprocess, sys, time
shmrt, upper = sys.argv[1:3]
def first_answer(cmd):
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    line = p.stdout.readline()
    elapsed = time.monotonic() - t
    p.stdin.close()
    p.wait()
    assert line == b"HELLO\n", line
    return elapsed * 1000
runs = 7
ctr = [first_answer(["ctr_", "run", "--rm", "--runtime", "io.containerd.shmrt.v1",
                     "docker.io/shmrt/upper:test", f"bench-{i}"]) for i in range(runs)]
direct = [first_answer([shmrt, "run", upper]) for _ in range(runs)]
for name, xs in (("ctr run --runtime io.containerd.shmrt.v1", ctr), ("shmrt run", direct)):
    print(f"{name:42} median {statistics.median(xs):7.1f} ms  (min {min(xs):.1f}, max {max(xs):.1f}, {runs} runs)")
PY

echo
echo "containerd tests: all passed"

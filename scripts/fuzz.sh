#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ (the frames and JSON bodies, the gateway's WebSocket
# reader, the cluster's wire formats, uploaded files) for a bounded time each and fails on
# the first crash.
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# The build is a plain `cargo build` with the flags cargo-fuzz would pass (coverage
# instrumentation for libFuzzer, AddressSanitizer, `--cfg fuzzing`), so CI does not compile
# cargo-fuzz itself first; `cargo fuzz run` works on the same crate for anyone who has it.
# Those flags are nightly-only and the machine has one stable toolchain, so RUSTC_BOOTSTRAP=1
# unlocks them (only for this build, in its own target dir). `--target` keeps build scripts
# and proc macros uninstrumented, as cargo-fuzz does.
# The committed seeds in corpus/<target>/ are read; what a run discovers goes to a scratch
# corpus under target/ so the repository never grows by itself. Targets run two at a time
# (each is one thread), so the machine's two cores are both busy.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Zsanitizer=address"

# The fuzz crate is its own workspace, outside `cargo fmt --all` in .ci/run.
cargo fmt --check

if [ "$#" -gt 0 ]; then targets="$*"; else
    targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^xinge-fuzz$')
fi
echo "== building fuzz targets: $(echo $targets)"
cargo build --release --target "$triple" --bins
bin=target/$triple/release

run() {
    local t=$1 rc=0
    mkdir -p "target/corpus/$t" "artifacts/$t"
    # -max_total_time bounds the run; -rss_limit_mb/-timeout turn hangs and blowups into
    # failures; -print_final_stats gives the execs/s figures quoted in docs/RELIABILITY.md.
    "$bin/$t" "target/corpus/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"target/$t.log" 2>&1 || rc=$?
    {
        echo "== fuzz $t for ${secs}s"
        grep -E '^#[0-9]+ *(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
            "target/$t.log" || true
        if [ "$rc" -ne 0 ]; then
            tail -n 40 "target/$t.log"
            echo "!! $t failed (exit $rc); the input is in fuzz/artifacts/$t/"
        fi
    } >"target/$t.summary"
    return "$rc"
}

failed=0
set -- $targets
while [ "$#" -gt 0 ]; do
    pids=()
    names=()
    for _ in 1 2; do
        [ "$#" -gt 0 ] || break
        run "$1" & pids+=($!); names+=("$1"); shift
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed=1
        cat "target/${names[$i]}.summary"
    done
    [ "$failed" -eq 0 ] || exit 1
done
echo "== fuzz: all targets ran ${secs}s without a crash"

#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (the frames and JSON bodies, the gateway's WebSocket
# reader, the cluster's wire formats) for a bounded time each and fails on the first crash.
# Usage: scripts/fuzz.sh [seconds per target, default 60].
#
# libFuzzer's instrumentation needs nightly-only compiler flags; the machine has one stable
# toolchain, so RUSTC_BOOTSTRAP=1 unlocks them (only for this build, in its own target dir).
# The committed seeds in corpus/<target>/ are read; what the run discovers goes to a scratch
# corpus under target/ so the repository never grows by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
fuzz_dir=fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The fuzz crate is its own workspace, outside `cargo fmt --all` in .ci/run.
(cd "$fuzz_dir" && cargo fmt --check)

targets=$(cd "$fuzz_dir" && cargo fuzz list)
echo "== building fuzz targets: $(echo $targets)"
(cd "$fuzz_dir" && cargo fuzz build -O)

for t in $targets; do
    scratch="$fuzz_dir/target/corpus/$t"
    mkdir -p "$scratch" "$fuzz_dir/artifacts/$t"
    echo "== fuzz $t for ${secs}s"
    # -max_total_time bounds the run; -rss_limit_mb/-timeout turn hangs and blowups into
    # failures; -print_final_stats gives the execs/s figures quoted in docs/RELIABILITY.md.
    rc=0
    (cd "$fuzz_dir" && cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1) >"$fuzz_dir/target/$t.log" 2>&1 || rc=$?
    grep -E '^#[0-9]+ *(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
        "$fuzz_dir/target/$t.log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$fuzz_dir/target/$t.log"
        echo "!! $t failed (exit $rc); the input is in $fuzz_dir/artifacts/$t/"
        exit 1
    fi
done
echo "== fuzz: all targets ran ${secs}s without a crash"

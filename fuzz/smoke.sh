#!/usr/bin/env bash
# A short run of every fuzz target, without cargo-fuzz: the targets are built with the
# coverage instrumentation cargo-fuzz asks rustc for (stable flags only, so no
# AddressSanitizer), and each runs for a few seconds from the kept seeds and regressions.
# Any crash, panic or timeout fails the script. Used by .ci/run; the long runs are in
# fuzz/README.md.
#
#   bash fuzz/smoke.sh                      # 10 s per target
#   ONCELOG_FUZZ_SECS=60 bash fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${ONCELOG_FUZZ_SECS:-10}
host=$(rustc -vV | sed -n 's/^host: //p')
out=target/fuzz-smoke
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks" \
    cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
    --target-dir "$out" --bins

for target in segment_decode hint_decode open_dir open_dir_crcfix salvage_dir ops_model resp_parse; do
    case $target in
        ops_model) seeds=fuzz/seeds/ops_model ;;
        resp_parse) seeds=fuzz/seeds/resp ;;
        *) seeds=fuzz/seeds/segment ;;
    esac
    work=$out/corpus/$target
    rm -rf "$work" && mkdir -p "$work" "$out/artifacts/$target"
    dirs=("$work" "$seeds")
    if [ -d "fuzz/regressions/$target" ]; then dirs+=("fuzz/regressions/$target"); fi
    log=$out/$target.log
    if ! "$out/$host/release/$target" -max_total_time="$secs" -max_len=65536 \
        -len_control=0 -timeout=30 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$target/" "${dirs[@]}" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz smoke: $target FAILED; the input is in $out/artifacts/$target/" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz smoke: $target: $execs executions in $secs s, no failure"
done

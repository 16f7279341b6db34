#!/usr/bin/env bash
# `oncelog serve` against `redis-server`, side by side in one run, driven by the same
# redis-benchmark command:
#
#   redis-benchmark -c 50 -r 1000000 -n N -P P SET key:__rand_int__ v NX EX 3600
#
# once without pipelining (-P 1) and once with -P 16, against oncelog serve with
# --durability sync and buffered, and Redis with appendonly and appendfsync always and
# everysec. Every server starts on an empty directory for each run; the targets take
# turns, ROUNDS times (default 2), so that a noisy minute hits them all alike. Prints a
# Markdown table of requests/s (each cell: the runs' figures) and the ratios of the best
# runs.
#
#   bash benches/compare/serve.sh                 # or: bash benches/compare/run.sh --serve
#   ONCELOG_SERVE_BENCH_N=200000 ROUNDS=1 bash benches/compare/serve.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
n=${ONCELOG_SERVE_BENCH_N:-1000000}
rounds=${ROUNDS:-2}
port=6398

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "serve.sh: installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

(cd "$root" && cargo build --release --quiet -p oncelog-cli)
bin="$root/target/release/oncelog"

work=$(mktemp -d)
server=""
stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=""
    fi
}
trap 'stop_server; rm -rf "$work"' EXIT

wait_ready() {
    for _ in $(seq 200); do
        redis-cli -p "$port" PING >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "serve.sh: the server on $port did not start" >&2
    exit 1
}

start() {
    rm -rf "$work/data" && mkdir -p "$work/data"
    case $1 in
        oncelog-sync | oncelog-buffered)
            "$bin" serve --dir "$work/data" --listen "127.0.0.1:$port" \
                --durability "${1#oncelog-}" >/dev/null 2>"$work/server.log" &
            ;;
        redis-always | redis-everysec)
            redis-server --port "$port" --bind 127.0.0.1 --dir "$work/data" --save '' \
                --appendonly yes --appendfsync "${1#redis-}" >"$work/server.log" 2>&1 &
            ;;
    esac
    server=$!
    wait_ready
}

# requests/s of one redis-benchmark run
run() {
    redis-benchmark -p "$port" -c 50 -r 1000000 -n "$n" -P "$1" --csv \
        SET 'key:__rand_int__' v NX EX 3600 2>/dev/null |
        awk -F'","' 'NR == 2 { print int($2) }'
}

targets=(oncelog-sync oncelog-buffered redis-always redis-everysec)
declare -A got
for round in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        for p in 1 16; do
            start "$t"
            rps=$(run "$p")
            stop_server
            echo "serve.sh: round $round, $t, -P $p: $rps requests/s" >&2
            got[$t,$p]="${got[$t,$p]:+${got[$t,$p]} / }$rps"
        done
    done
done

best() { tr '/' '\n' <<<"${got[$1,$2]}" | sort -n | tail -1 | tr -d ' '; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "redis-benchmark -c 50 -r 1000000 -n $n SET key:__rand_int__ v NX EX 3600; $(nproc) cores; $(date -u +%F)"
echo
echo "| server | -P 1 requests/s | -P 16 requests/s |"
echo "|---|--:|--:|"
for t in "${targets[@]}"; do
    echo "| $t | ${got[$t,1]} | ${got[$t,16]} |"
done
echo
for p in 1 16; do
    s=$(best oncelog-sync "$p")
    echo "-P $p, best runs: oncelog sync = $(ratio "$s" "$(best redis-always "$p")")x Redis always," \
        "$(ratio "$s" "$(best redis-everysec "$p")")x Redis everysec;" \
        "oncelog buffered = $(ratio "$(best oncelog-buffered "$p")" "$(best redis-everysec "$p")")x Redis everysec"
done

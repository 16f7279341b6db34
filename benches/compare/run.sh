#!/usr/bin/env bash
# The one command for the peer comparison: starts a throwaway Redis on 127.0.0.1:6399
# (installing redis-server with apt-get if it is missing and we are root), runs the
# harness with the given arguments, then stops Redis and deletes its directory.
#
#   bash benches/compare/run.sh [--quick] [harness flags...]
#   bash benches/compare/run.sh --serve     # oncelog serve vs redis-server (serve.sh)
#
# Without redis-server the harness still runs every other peer and says Redis was skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${1:-}" == "--serve" ]]; then
    exec bash "$here/serve.sh"
fi
root="$(cd "$here/../.." && pwd)"
host=127.0.0.1
port=6399

say() { echo "run.sh: $*" >&2; }

# Is something answering PING on host:port? (bash's /dev/tcp: no redis-cli needed)
redis_ping() {
    local reply=""
    if exec 3<>"/dev/tcp/$host/$port"; then
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || true
        exec 3<&- 3>&-
    fi
    [[ "$reply" == +PONG* ]]
}

if ! command -v redis-server >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "redis-server not found: installing it with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        say "redis-server not found and not root (cannot apt-get install): Redis will be skipped"
    fi
fi

redis_dir=""
redis_pid=""
cleanup() {
    if [[ -n "$redis_pid" ]]; then
        # SIGTERM: Redis shuts down cleanly (no RDB: save is off).
        kill "$redis_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [[ -n "$redis_dir" ]]; then
        rm -rf "$redis_dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if command -v redis-server >/dev/null 2>&1; then
    if redis_ping 2>/dev/null; then
        say "a Redis server already answers on $host:$port: using it (it will be FLUSHALLed)"
    else
        redis_dir="$(mktemp -d "${TMPDIR:-/tmp}/oncelog-compare-redis.XXXXXX")"
        redis-server --bind "$host" --port "$port" --dir "$redis_dir" \
            --appendonly yes --appendfsync everysec --save "" \
            --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
        for _ in $(seq 100); do
            if [[ -s "$redis_dir/redis.pid" ]] && redis_ping 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        if [[ -s "$redis_dir/redis.pid" ]]; then
            redis_pid="$(cat "$redis_dir/redis.pid")"
        fi
        if redis_ping 2>/dev/null; then
            say "started redis-server (pid $redis_pid) on $host:$port, data in $redis_dir"
        else
            say "redis-server did not start (log: $redis_dir/redis.log); Redis will be skipped"
            tail -n 5 "$redis_dir/redis.log" >&2 || true
        fi
    fi
fi

cd "$root"
cargo run --release -p oncelog-compare -- "$@"

#!/usr/bin/env bash
# Sharding with an existing Redis-protocol proxy: three `oncelog serve` shards behind
# twemproxy (nutcracker) with ketama consistent hashing, driven only through the proxy by
# redis-cli.
#
# 1. Four clients at once send `SET key v NX EX 3600` for the same keys, each in its own
#    order: every key must be answered OK exactly once in all.
# 2. A writer claims fresh keys while one shard is killed with SIGKILL; the shard is
#    restarted on its directory and port.
# 3. Every key any client saw answered OK, before or during the kill, must now be a
#    duplicate (nil) through the proxy.
#
# Needs nutcracker and redis-cli; installs them with apt-get when missing (as root). Run
# from anywhere; `.ci/run` runs it. ONCELOG_SHARD_KEYS sets the number of keys (default
# 20000).
#
#   bash scripts/shards.sh
set -euo pipefail
cd "$(dirname "$0")/.."

keys=${ONCELOG_SHARD_KEYS:-20000}

need=()
command -v nutcracker >/dev/null || need+=(nutcracker)
command -v redis-cli >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "shards: installing ${need[*]}"
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
nutcracker=$(command -v nutcracker || echo /usr/sbin/nutcracker)

cargo build --release --quiet -p oncelog-cli
bin=$PWD/target/release/oncelog

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        { kill -9 "$p" && wait "$p"; } 2>/dev/null || true
    done
    if [ -z "${ONCELOG_SHARD_KEEP:-}" ]; then rm -rf "$work"; else echo "shards: kept $work"; fi
}
trap cleanup EXIT

# Starts shard $1 (listen address $2) on its directory; sets shard_pid and shard_addr.
start_shard() {
    local i=$1 listen=$2
    mkfifo "$work/out$i"
    "$bin" serve --dir "$work/shard$i" --listen "$listen" >"$work/out$i" 2>>"$work/shard$i.log" &
    shard_pid=$!
    pids+=("$shard_pid")
    read -r line <"$work/out$i"
    rm "$work/out$i"
    shard_addr=${line#listening on }
}

declare -a addr pid
for i in 1 2 3; do
    start_shard "$i" 127.0.0.1:0
    addr[$i]=$shard_addr
    pid[$i]=$shard_pid
done

# A free port for the proxy, from the kernel.
proxy_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 22121)
cat >"$work/nutcracker.yml" <<EOF
oncelog:
  listen: 127.0.0.1:$proxy_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_retry_timeout: 100
  server_failure_limit: 1
  timeout: 5000
  servers:
    - ${addr[1]}:1 shard1
    - ${addr[2]}:1 shard2
    - ${addr[3]}:1 shard3
EOF
"$nutcracker" -c "$work/nutcracker.yml" -o "$work/nutcracker.log" &
pids+=("$!")
# --no-raw: one line per reply (OK, (nil), (error) ...) even when stdout is not a terminal.
proxy=(redis-cli --no-raw -h 127.0.0.1 -p "$proxy_port")
for _ in $(seq 100); do
    "${proxy[@]}" SET probe v NX EX 60 >/dev/null 2>&1 && break
    sleep 0.1
done
echo "shards: 3 shards (${addr[*]}) behind nutcracker on 127.0.0.1:$proxy_port"

# 1. Exactly once across four concurrent clients.
clients=()
seq 1 "$keys" | sed 's/^/evt_/' >"$work/keys"
for c in 1 2 3 4; do
    case $c in
        1) cat "$work/keys" ;;
        2) tac "$work/keys" ;;
        3) awk 'NR % 2 == 0' "$work/keys"; awk 'NR % 2 == 1' "$work/keys" ;;
        4) shuf --random-source=<(yes) "$work/keys" ;;
    esac >"$work/order$c"
    sed 's/.*/SET & v NX EX 3600/' "$work/order$c" | "${proxy[@]}" >"$work/reply$c" &
    clients+=("$!")
done
wait "${clients[@]}"
for c in 1 2 3 4; do
    lines=$(wc -l <"$work/reply$c")
    [ "$lines" -eq "$keys" ] || { echo "shards: client $c got $lines replies for $keys keys" >&2; exit 1; }
    paste -d' ' "$work/order$c" "$work/reply$c"
done | awk -v keys="$keys" '
    $2 == "OK" { ok[$1]++ }
    $2 != "OK" && $2 != "(nil)" { bad++; if (bad < 5) print "unexpected reply: " $0 > "/dev/stderr" }
    END {
        for (k in ok) if (ok[k] != 1) { print "shards: " k " answered OK " ok[k] " times" > "/dev/stderr"; exit 1 }
        n = length(ok)
        if (n != keys) { print "shards: " n " of " keys " keys answered OK once" > "/dev/stderr"; exit 1 }
        if (bad > 0) exit 1
    }'
echo "shards: $keys keys, 4 clients: every key answered OK exactly once"
for i in 1 2 3; do
    echo "shards: shard$i holds $(redis-cli -h "${addr[$i]%:*}" -p "${addr[$i]##*:}" DBSIZE) keys"
done

# 2. Claim fresh keys while shard 2 is killed with SIGKILL and restarted on its directory.
seq 1 "$keys" | sed 's/^/late_/' >"$work/late"
sed 's/.*/SET & v NX EX 3600/' "$work/late" | "${proxy[@]}" >"$work/late_reply" 2>"$work/late_errors" &
writer=$!
for _ in $(seq 200); do
    [ "$(wc -l <"$work/late_reply")" -ge $((keys / 4)) ] && break
    sleep 0.05
done
kill -9 "${pid[2]}"
wait "${pid[2]}" 2>/dev/null || true
echo "shards: killed shard2 (pid ${pid[2]}) after $(wc -l <"$work/late_reply") replies"
start_shard 2 "${addr[2]}"
pid[2]=$shard_pid
wait "$writer" || true

# 3. Every acknowledged key is still a duplicate. redis-cli writes one line per reply, in
#    order, so line N answers key N.
cat "$work/keys" >"$work/acked"
replies=$(wc -l <"$work/late_reply")
[ "$replies" -le "$keys" ] || { echo "shards: $replies replies for $keys commands" >&2; exit 1; }
paste -d' ' "$work/late" "$work/late_reply" | awk '$2 == "OK" { print $1 }' >>"$work/acked"
acked=$(wc -l <"$work/acked")
late_ok=$((acked - keys))
echo "shards: the writer got OK for $late_ok of $keys fresh keys; the rest failed while shard2 was down"
sed 's/.*/SET & again NX EX 3600/' "$work/acked" | "${proxy[@]}" >"$work/check"
again=$(grep -c -v -x '(nil)' "$work/check" || true)
if [ "$again" -ne 0 ] || [ "$(wc -l <"$work/check")" -ne "$acked" ]; then
    echo "shards: $again of $acked acknowledged keys were not duplicates after the kill:" >&2
    paste -d' ' "$work/acked" "$work/check" | grep -v ' (nil)$' | head -5 >&2
    exit 1
fi
echo "shards: after kill -9 and restart of shard2, all $acked acknowledged keys are duplicates"

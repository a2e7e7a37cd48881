#!/usr/bin/env bash
# A multi-process standin cluster on loopback: etcd, three `standin run` nodes,
# `standin tso --loop` as a client, and a kill -9 of the active tso node every
# few seconds (restarted right after), until Ctrl-C or --duration.
#
#   scripts/cluster.sh [--duration 30s] [--kill-every 4s]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=""
kill_every=4
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --kill-every) kill_every="${2%s}"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/deps.sh
cargo build --release --quiet --features cli --bin standin
bin=target/release/standin

work=$(mktemp -d -t standin-cluster-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}" ${node_pids[@]+"${node_pids[@]}"}; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Ports near a random base, so two clusters (or a test run) rarely collide.
base=$((20000 + RANDOM % 20000))
etcd_port=$base
etcd --name cluster --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((base + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 1))" \
  --initial-cluster "cluster=http://127.0.0.1:$((base + 1))" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

for n in 0 1 2; do
  cat >"$work/node$n.yaml" <<YAML
etcd:
  endpoints: [127.0.0.1:$etcd_port]
  rootPath: standin-cluster
node:
  address: 127.0.0.1:$((base + 10 + n))
session:
  # A killed process holds the role until its lease expires: keep that short here.
  ttl: 3s
YAML
done
cat >"$work/client.yaml" <<YAML
etcd:
  endpoints: [127.0.0.1:$etcd_port]
  rootPath: standin-cluster
YAML

node_pids=()
start_node() {
  RUST_LOG=warn "$bin" --config "$work/node$1.yaml" run --role tso >>"$work/node$1.log" 2>&1 &
  node_pids[$1]=$!
  disown "$!" # no "Killed" notice from the shell: the kills are the point

}
for n in 0 1 2; do start_node "$n"; done
echo "etcd on 127.0.0.1:$etcd_port; nodes on 127.0.0.1:$((base + 10))-$((base + 12)); logs in $work"

# The client rides through every kill; its lines say when it saw a failover.
"$bin" --config "$work/client.yaml" tso --loop ${duration:+--duration "$duration"} &
client=$!
pids+=("$client")

started=$SECONDS
killed=""
while kill -0 "$client" 2>/dev/null; do
  sleep "$kill_every"
  kill -0 "$client" 2>/dev/null || break
  # The tso leader as etcd shows it: "server_id address state".
  # The table's columns: ROLE LEADER ADDRESS EPOCH STATE STANDBYS.
  leader=$("$bin" --config "$work/client.yaml" status 2>/dev/null | awk '$1 == "tso" && $2 != "-" {print $2, $3, $5}')
  read -r id address state <<<"$leader" || true
  # A killed leader stays in etcd until its lease expires: wait for a live successor.
  if [ -z "${id:-}" ] || [ "$state" != serving ] || [ "$id" = "$killed" ]; then
    continue
  fi
  for n in 0 1 2; do
    if [ "$address" = "127.0.0.1:$((base + 10 + n))" ]; then
      echo "[$((SECONDS - started))s] kill -9 node$n (server $id), the active tso at $address"
      kill -9 "${node_pids[$n]}" 2>/dev/null || true
      killed=$id
      start_node "$n"
    fi
  done
done
wait "$client"

#!/usr/bin/env bash
# One syncnode of a benchmark pair, started by the anchors' daemon_pair.sh:
#   pair_node.sh SELF_HOME OTHER_HOME FOLDER PORT OTHER_PORT API_PORT
# BENCH_NODE_ARGS adds options to both nodes (e.g. "--chunk-size 256").
# Both identities are created on first use (under a lock, since A and B start together), then the
# node runs in the foreground trusting the other one at 127.0.0.1:OTHER_PORT.
set -euo pipefail
self_home=$1 other_home=$2 folder=$3 port=$4 other_port=$5 api_port=$6
bin=${BENCH_SYNCNODE_BIN:?set BENCH_SYNCNODE_BIN}
ident() {  # ident HOME -> device id (creates the identity if missing)
  mkdir -p "$1/sync-placeholder"
  [ -f "$1/init.toml" ] || "$bin" init --config "$1/init.toml" --data-dir "$1/data" --sync-folder "$1/sync-placeholder" >/dev/null
  "$bin" id --config "$1/init.toml"
}
exec 9>"$(dirname "$self_home")/.pair.lock"
flock 9
ident "$self_home" >/dev/null
other_id=$(ident "$other_home")
flock -u 9
exec "$bin" --sync-folder "$folder" --data-dir "$self_home/data" --port "$port" --no-mdns \
  --peer "$other_id@127.0.0.1:$other_port" --config "$self_home/init.toml" ${BENCH_NODE_ARGS:-} 2>>"$self_home/node.log" \
  < /dev/null

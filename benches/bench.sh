#!/usr/bin/env bash
# Benchmark: the anchors' standard workloads (shared/tools/anchors) against two syncnode processes
# on loopback, in a private network namespace; prints a median table (seconds, bytes on the wire).
#   benches/bench.sh                      # W1..W5, 3 runs
#   WORKLOADS="W3 W3b W6" RUNS=3 benches/bench.sh
#   COMPARE=1 benches/bench.sh            # also Syncthing and rsync in the same run
#   BENCH_SYNCNODE_BIN=/tmp/syncnode WORKLOADS="W6 W7 W8 W9" RUNS=1 benches/bench.sh   # a copied binary
#   COMPARE=1 SYNCTHING_WORKLOADS=W7 RSYNC_WORKLOADS="W7 W8" WORKLOADS="W6 W7 W8 W9" RUNS=1 benches/bench.sh
# Results (JSON per run, summary tables) go to $RESULTS (default /tmp/anchors/syncnode).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# BENCH_SYNCNODE_BIN: a binary copied aside, so that builds during a long run do not swap it.
# (Not a SYNCNODE_ variable: the node reads those as settings and refuses unknown ones.)
if [ -z "${BENCH_SYNCNODE_BIN:-}" ]; then
  cargo build --release --locked --bin syncnode
  export BENCH_SYNCNODE_BIN="$CARGO_TARGET_DIR/release/syncnode"
fi
anchors="${ANCHORS:-$(cd .. && pwd)/shared/tools/anchors}"
[ -d "$anchors" ] || { echo "bench: anchors not found at $anchors (set ANCHORS)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 needed" >&2; exit 1; }
export RESULTS="${RESULTS:-/tmp/anchors/syncnode}"
mkdir -p "$RESULTS"
here="$(pwd)/benches"
# The harness waits until A's API reports B connected, and reads A's byte counters from it.
ready='curl -sf http://127.0.0.1:28301/rest/status | grep -q "\"connected\":true"'
counters='curl -sf http://127.0.0.1:28301/rest/status | python3 -c "import json,sys; p=json.load(sys.stdin)[\"peers\"][0]; print(json.dumps({\"sent\": p[\"bytes_out\"], \"recv\": p[\"bytes_in\"]}))"'
export START_A="env SYNCNODE_NODE__API_LISTEN=127.0.0.1:28301 $here/pair_node.sh {HOME_A} {HOME_B} {A} 27301 27302 28301"
export START_B="env SYNCNODE_NODE__API_LISTEN=127.0.0.1:28302 $here/pair_node.sh {HOME_B} {HOME_A} {B} 27302 27301 28302"
export READY_CMD="$ready" COUNTERS_CMD="$counters" STATE_A='{HOME_A}/data' STATE_B='{HOME_B}/data'
command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null
if [ "${COMPARE:-0}" = 1 ]; then
  command -v syncthing >/dev/null && command -v rsync >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq syncthing rsync unison time >/dev/null; }
  # Each yardstick on its own set if asked (Syncthing on a million files takes hours).
  WORKLOADS="${SYNCTHING_WORKLOADS:-${WORKLOADS:-default}}" bash "$anchors/syncthing_pair.sh"
  WORKLOADS="${RSYNC_WORKLOADS:-${WORKLOADS:-default}}" TOOLS="rsyncd" bash "$anchors/oneway_baselines.sh"
fi
# The label only for our own runs: the Syncthing and rsync scripts keep their own.
TAG="${TAG:-syncnode}" bash "$anchors/daemon_pair.sh"
python3 "$anchors/benchlib.py" summarize "$RESULTS"/*.json

#!/usr/bin/env bash
# Where a sync's time goes: runs the scaling probe (benches/scale.py) and records both nodes with
# `perf record -g` for a stretch of the sync, then prints each node's busiest threads.
#   benches/profile.sh [FILES] [SECONDS] [OUT]        # defaults: 100000 15 /tmp/syncnode-profile
#   DELAY=10 SCALE_WORK=/dev/shm/sc SYNCNODE=/tmp/syncnode benches/profile.sh 100000 15
# DELAY: seconds after both nodes started before recording (default 10; the write comes first).
# SCALE_WORK on a tmpfs keeps the disk (and ext4's memory of deletes) out of the picture.
# Then, e.g.: perf report -i OUT/b.data --no-children --sort sym -g none
set -euo pipefail
FILES=${1:-100000}
SECONDS_RECORDED=${2:-15}
OUT=${3:-/tmp/syncnode-profile}
WORK=${SCALE_WORK:-/tmp/syncnode-scale}
command -v perf > /dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 2; }
mkdir -p "$OUT"
rm -f "$OUT"/a.data "$OUT"/b.data
cd "$(dirname "$0")/.."
SCALE_WORK="$WORK" python3 benches/scale.py "$FILES" > "$OUT/scale.out" 2>&1 &
probe=$!
a="" b=""
for _ in $(seq 600); do
    a=$(pgrep -f -- "--config $WORK/a/node.toml" | head -1 || true)
    b=$(pgrep -f -- "--config $WORK/b/node.toml" | head -1 || true)
    [[ -n "$a" && -n "$b" ]] && break
    sleep 0.1
done
[[ -n "$a" && -n "$b" ]] || { echo "the nodes did not start" >&2; wait "$probe"; exit 1; }
sleep "${DELAY:-10}"
perf record -F 499 -g -p "$a" -o "$OUT/a.data" -- sleep "$SECONDS_RECORDED" > /dev/null 2>&1 &
perf record -F 499 -g -p "$b" -o "$OUT/b.data" -- sleep "$SECONDS_RECORDED" > /dev/null 2>&1 &
wait
cat "$OUT/scale.out"
for node in a b; do
    echo "== node $node: samples by thread (at most $((SECONDS_RECORDED * 499 * $(nproc))) on this machine)"
    perf script -i "$OUT/$node.data" -F comm,tid 2> /dev/null | sort | uniq -c | sort -rn | head -6
done

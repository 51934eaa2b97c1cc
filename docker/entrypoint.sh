#!/bin/sh
# Container entrypoint: one syncnode that trusts its named neighbours, with nothing configured by hand.
#
#  1. First start: `syncnode init` creates the TLS identity in the data dir (its own volume, so a
#     restarted or recreated container keeps its device ID). Later starts: `syncnode id`.
#  2. Publishes the device ID as $IDS_DIR/<NODE_NAME> on a volume every node mounts.
#  3. Waits (at most PEER_WAIT seconds) until every name in PEER_NAMES has published its ID.
#  4. Writes the config: the folder, mDNS on, and one [[peer]] per neighbour with a device_id and
#     NO address, so neighbours are found by mDNS on the container network. Then execs syncnode.
#
# With NETWORK_KEY set, steps 3 and 4 change: no waiting and no [[peer]] at all. The config says
# trust = "network-key", the key goes to syncnode as SYNCNODE_SECURITY__NETWORK_KEY (never into the
# file), and every syncnode found by mDNS that proves the same key joins.
#
# Settings (deliberately not SYNCNODE_*: syncnode reads SYNCNODE_<SECTION>__<KEY> as config
# overrides and refuses unknown ones; real overrides such as SYNCNODE_SYNC__COMPRESSION pass through):
#   NODE_NAME   this node's name (default: the container's hostname)
#   PEER_NAMES  names of all nodes of the cluster, e.g. "node1 node2 node3" (this node may be listed)
#   PEER_WAIT   seconds to wait for the others' IDs (default 120)
#   IDS_DIR     the shared volume (default /ids)
#   SYNC_DIR    the synced folder (default /data/sync)
#   DATA_DIR    index and identity (default /var/lib/syncnode)
#   CONFIG      config path (default /etc/syncnode/node.toml)
#   NETWORK_KEY the cluster's shared key (trust = "network-key"); empty: trust by device ID
set -eu

NODE_NAME="${NODE_NAME:-$(hostname)}"
PEER_NAMES="${PEER_NAMES:-}"
PEER_WAIT="${PEER_WAIT:-120}"
IDS_DIR="${IDS_DIR:-/ids}"
SYNC_DIR="${SYNC_DIR:-/data/sync}"
DATA_DIR="${DATA_DIR:-/var/lib/syncnode}"
CONFIG="${CONFIG:-/etc/syncnode/node.toml}"
NETWORK_KEY="${NETWORK_KEY:-}"
# Exported now: `syncnode id` below reads a config that may already say trust = "network-key".
if [ -n "$NETWORK_KEY" ]; then export SYNCNODE_SECURITY__NETWORK_KEY="$NETWORK_KEY"; fi

log() { echo "entrypoint[$NODE_NAME]: $*" >&2; }

case "$NODE_NAME" in
  ""|*/*|.*) log "bad NODE_NAME '$NODE_NAME'"; exit 2 ;;
esac

mkdir -p "$SYNC_DIR" "$IDS_DIR" "$(dirname "$CONFIG")"

# 1. Identity. (`--data-dir` goes before `init`: it is a top-level flag, not one of init's.)
if [ -f "$CONFIG" ]; then
  out="$(syncnode id --config "$CONFIG")"
else
  out="$(syncnode --data-dir "$DATA_DIR" init --config "$CONFIG" --sync-folder "$SYNC_DIR")"
  log "initialised $CONFIG with the identity in $DATA_DIR"
fi
my_id="$(printf '%s\n' "$out" | tail -n 1 | tr -d ' \r')"
case "$my_id" in
  ""|*[!A-Za-z0-9-]*) log "could not read this node's device ID (got '$out')"; exit 1 ;;
esac
log "device ID $my_id"

# 2. Publish it (write then rename: a reader never sees half an ID).
printf '%s\n' "$my_id" > "$IDS_DIR/.$NODE_NAME.tmp"
mv -f "$IDS_DIR/.$NODE_NAME.tmp" "$IDS_DIR/$NODE_NAME"

# 3. Wait for the others (not needed under a network key: whoever proves it joins).
deadline=$(( $(date +%s) + PEER_WAIT ))
while [ -z "$NETWORK_KEY" ]; do
  missing=""
  for name in $PEER_NAMES; do
    [ "$name" = "$NODE_NAME" ] && continue
    [ -s "$IDS_DIR/$name" ] || missing="$missing $name"
  done
  [ -z "$missing" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "gave up after ${PEER_WAIT}s waiting for the device IDs of:$missing (in $IDS_DIR)"
    exit 1
  fi
  sleep 0.2
done

# 4. Config (rewritten on every start, so a changed PEER_NAMES or a re-created peer is picked up).
{
  cat <<EOF
# Written by the container entrypoint on every start; edit docker/entrypoint.sh instead.
[node]
name = "$NODE_NAME"
data_dir = "$DATA_DIR"
listen = "0.0.0.0:50051"
api_listen = "0.0.0.0:8384"

[[folder]]
id = "default"
path = "$SYNC_DIR"
mode = "send-receive"

[sync]
chunk_size = "64KiB"
rescan_interval = "1m"
debounce = "20ms"
compression = "zstd"

[discovery]
mdns = true

EOF
  if [ -n "$NETWORK_KEY" ]; then
    printf '\n[security]\ntrust = "network-key"   # the key: SYNCNODE_SECURITY__NETWORK_KEY\nnetwork_key = ""\n'
  else
    printf '\n[security]\ntrust = "listed"\nnetwork_key = ""\n'
    for name in $PEER_NAMES; do
      [ "$name" = "$NODE_NAME" ] && continue
      id="$(tr -d ' \r\n' < "$IDS_DIR/$name")"
      [ "$id" = "$my_id" ] && continue
      printf '\n# %s (found by mDNS: no address)\n[[peer]]\ndevice_id = "%s"\n' "$name" "$id"
    done
  fi
} > "$CONFIG.tmp"
mv -f "$CONFIG.tmp" "$CONFIG"
if [ -n "$NETWORK_KEY" ]; then
  log "trusting whoever proves the network key; starting syncnode"
else
  log "trusting:$(for n in $PEER_NAMES; do [ "$n" = "$NODE_NAME" ] || printf ' %s' "$n"; done); starting syncnode"
fi

cfg="$CONFIG"
unset NODE_NAME PEER_NAMES PEER_WAIT IDS_DIR SYNC_DIR DATA_DIR CONFIG NETWORK_KEY
exec syncnode --config "$cfg" "$@"

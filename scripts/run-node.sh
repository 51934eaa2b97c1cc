#!/usr/bin/env bash
# Builds syncnode and runs a node. Without arguments: the example config (config/example-node.toml),
# syncing config/example-sync with its index in config/example-data.
# Usage: scripts/run-node.sh [syncnode arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin syncnode
if [ $# -eq 0 ]; then
  mkdir -p config/example-sync
  set -- --config config/example-node.toml
fi
exec "$CARGO_TARGET_DIR/release/syncnode" "$@"

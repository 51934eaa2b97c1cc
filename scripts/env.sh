# Sourced by the scripts: system packages, and one cargo target dir outside the checkout that
# every clone on this machine shares, so RocksDB's 25-minute C++ build is paid once per machine.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/syncnode/target 2>/dev/null && [ -w /var/cache/syncnode/target ]; then
    export CARGO_TARGET_DIR=/var/cache/syncnode/target
  else
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/syncnode/target"
  fi
fi
mkdir -p "$CARGO_TARGET_DIR"

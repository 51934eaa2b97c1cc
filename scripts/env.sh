# Sourced by the scripts: system packages, and one cargo target dir outside the checkout that
# every clone on this machine shares, so RocksDB's 25-minute C++ build is paid once per machine.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh"
# HELPER WORKTREE ONLY (the lead drops this on merge): cargo gives every checkout of this crate
# the same artifact names, so worktrees sharing one target dir overwrite each other's builds and
# run each other's binaries. This worktree has its own copy of the built target dir.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncnode/target-versions}"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/syncnode/target 2>/dev/null && [ -w /var/cache/syncnode/target ]; then
    export CARGO_TARGET_DIR=/var/cache/syncnode/target
  else
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/syncnode/target"
  fi
fi
mkdir -p "$CARGO_TARGET_DIR"

#!/usr/bin/env bash
# Formatting and lints: rustfmt (rustfmt.toml) on the crate and the fuzz targets, the import graph
# of src/ (scripts/layers.py: no circle, no arrow up the layers), then clippy on
# every target with warnings as errors. Clippy uses the release profile like the tests, so it reuses
# RocksDB's built C++ (the build script's output is shared) instead of compiling it again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo fmt --check
python3 scripts/layers.py
(cd fuzz && cargo fmt --check)
cargo clippy --release --all-targets --locked -- -D warnings

#!/usr/bin/env bash
# The whole test suite: unit and property tests, then the integration tests that run real nodes.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --release --locked "$@"

#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of everything syncnode parses from a peer or the
# disk; the targets are in fuzz/fuzz_targets, the results in docs/fuzzing.md.
#
# Usage:
#   scripts/fuzz.sh list                  the targets
#   scripts/fuzz.sh build                 build every target
#   scripts/fuzz.sh smoke [SECONDS]       each target for SECONDS (default 20) from the seed corpus (CI)
#   scripts/fuzz.sh run TARGET SECONDS    one target, its corpus kept in fuzz/corpus-run/TARGET
#   scripts/fuzz.sh run all SECONDS       every target in turn
#   scripts/fuzz.sh long [TARGET...]      each (default: all) until 10 million runs or 30 minutes,
#                                         the log in $FUZZ_LOG_DIR (default: beside the target dir)
#   scripts/fuzz.sh seeds                 rewrite fuzz/corpus/TARGET from syncnode's own encoders
#
# Stable Rust: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz passes (sanitizer, coverage).
# The fuzz crate builds the library without its `node` feature, so RocksDB is never compiled here;
# its target dir is its own (other flags than the main build) and lives outside the checkout.
# Findings land in fuzz/artifacts/TARGET; reproduce one with `scripts/fuzz.sh repro TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export RUSTC_BOOTSTRAP=1
if [ -z "${FUZZ_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/syncnode/fuzz-target 2>/dev/null && [ -w /var/cache/syncnode/fuzz-target ]; then
    FUZZ_TARGET_DIR=/var/cache/syncnode/fuzz-target
  else
    FUZZ_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/syncnode/fuzz-target"
  fi
fi
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
mkdir -p "$CARGO_TARGET_DIR"
command -v protoc >/dev/null 2>&1 || bash scripts/setup.sh   # build.rs needs protoc
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# -a: debug assertions (integer overflow checks) in the fuzzed code; release optimisation.
build_flags=(-a --fuzz-dir fuzz)
targets() { cargo fuzz list --fuzz-dir fuzz; }
binary() { echo "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$1"; }
# libFuzzer limits: a 2 GiB RSS cap and a 512 MiB single allocation cap make a memory blow-up a
# finding; 10 s per input makes a hang one.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10)

build() { cargo fuzz build "${build_flags[@]}" "$@"; }

run_one() { # TARGET SECONDS CORPUS...
  local target=$1 seconds=$2; shift 2
  mkdir -p "fuzz/artifacts/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  "$(binary "$target")" "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" ${FUZZ_ARGS:-} "$@"
}

case "${1:-}" in
  list) targets ;;
  build) build ;;
  smoke)
    seconds=${2:-20}
    build
    for t in $(targets); do
      # A scratch copy of the seeds: smoke runs must not grow the committed corpus.
      scratch=$(mktemp -d)
      mkdir -p "fuzz/corpus/$t"
      run_one "$t" "$seconds" "$scratch" "fuzz/corpus/$t"
      rm -rf "$scratch"
    done
    ;;
  run)
    [ $# -eq 3 ] || { echo "usage: $0 run TARGET|all SECONDS" >&2; exit 2; }
    build
    if [ "$2" = all ]; then list=$(targets); else list=$2; fi
    for t in $list; do
      mkdir -p "fuzz/corpus-run/$t"
      run_one "$t" "$3" "fuzz/corpus-run/$t" "fuzz/corpus/$t"
    done
    ;;
  long)
    shift
    build
    list=${*:-$(targets)}
    logs=${FUZZ_LOG_DIR:-$(dirname "$CARGO_TARGET_DIR")/fuzz-logs}
    mkdir -p "$logs"
    for t in $list; do
      mkdir -p "fuzz/corpus-run/$t"
      FUZZ_ARGS="-runs=10000000 ${FUZZ_ARGS:-}" run_one "$t" 1800 "fuzz/corpus-run/$t" "fuzz/corpus/$t" >"$logs/$t.log" 2>&1 && status=ok || status="FAILED ($?)"
      # The final line: executions, coverage (cov: edges, ft: features), corpus, exec/s, memory.
      echo "$t $status $(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -1) $(grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$logs/$t.log" | tr '\n' ' ')" | tee -a "$logs/results.txt"
    done
    ;;
  repro)
    [ $# -eq 3 ] || { echo "usage: $0 repro TARGET FILE" >&2; exit 2; }
    build "$2"
    "$(binary "$2")" "${limits[@]}" "$3"
    ;;
  seeds)
    build
    for t in $(targets); do
      mkdir -p "fuzz/corpus/$t"
      # Targets with a real input format write their seeds and exit; structured ones do nothing.
      SYNCNODE_FUZZ_SEEDS="$root/fuzz/corpus/$t" "$(binary "$t")" -runs=0 >/dev/null 2>&1 || true
    done
    ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac

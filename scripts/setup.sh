#!/usr/bin/env bash
# Installs what building and testing syncnode needs from the system, once per machine.
# Called by `scripts/run-node.sh` and `scripts/test.sh`; safe to run again (it only installs what is missing).
#   libclang1-14, libclang-common-14-dev: bindgen for librocksdb-sys ("Unable to find libclang")
#   protobuf-compiler: protoc for tonic-prost-build
#   iproute2: network namespaces for the multi-host tests
#   chromium, chromium-driver: headless browser for the status page test (tests/browser.rs)
set -euo pipefail
need=()
dpkg -s libclang1-14 >/dev/null 2>&1 || need+=(libclang1-14)
dpkg -s libclang-common-14-dev >/dev/null 2>&1 || need+=(libclang-common-14-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

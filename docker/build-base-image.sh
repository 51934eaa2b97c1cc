#!/usr/bin/env bash
# Builds the local base image `syncnode-base:bookworm` (a minimal Debian bookworm) without any image
# registry: debootstrap --variant=minbase from the Debian mirror apt already uses, then
# `docker import`. Done once per machine: it does nothing if the image exists, and the
# debootstrapped tarball is cached, so re-importing (e.g. after `docker system prune`) is offline.
#
# Usage: docker/build-base-image.sh [IMAGE]      (default IMAGE: syncnode-base:bookworm)
# Environment: BASE_MIRROR   the Debian mirror (default: the first bookworm mirror in apt's sources)
#              BASE_CACHE    where the tarball is kept (default: /var/cache/syncnode, else ~/.cache/syncnode)
#
# With a normal registry none of this is needed: `docker build -f docker/Dockerfile ...` without the
# BASE_IMAGE build argument uses debian:bookworm-slim.
set -euo pipefail

image="${1:-syncnode-base:bookworm}"
suite=bookworm

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-base-image: $image already present" >&2
  exit 0
fi

if [ -n "${BASE_CACHE:-}" ]; then
  cache="$BASE_CACHE"
elif mkdir -p /var/cache/syncnode 2>/dev/null && [ -w /var/cache/syncnode ]; then
  cache=/var/cache/syncnode
else
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/syncnode"
fi
mkdir -p "$cache"
tarball="$cache/debian-$suite-minbase-$(dpkg --print-architecture 2>/dev/null || uname -m).tar"

if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi

# Two builds at once (two test runs) wait for each other instead of racing on the tarball.
exec 9>"$cache/.base-image.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-base-image: $image already present" >&2
  exit 0
fi

# The mirror apt uses for bookworm (not -security, not third-party repositories): one-line
# sources.list entries and deb822 .sources files both count.
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                        if ($(i+1) == s && $i !~ /security/) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '
      function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ")) { n = split(uris, u, " "); for (j = 1; j <= n; j++) if (u[j] !~ /security/) { print u[j]; found = 1; exit } } types = uris = suites = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/  { sub(/^Types:[[:space:]]*/, "");  types = $0 }
      /^URIs:/   { sub(/^URIs:[[:space:]]*/, "");   uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      END { if (!found) flush() }' "$f"
  done
}

if [ ! -s "$tarball" ]; then
  mirror="${BASE_MIRROR:-$(find_mirror | head -n1)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base-image: installing debootstrap" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
  fi
  root="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap '$SUDO rm -rf "$root" "$tarball.part"' EXIT
  echo "build-base-image: debootstrap --variant=minbase $suite from $mirror (a few minutes, once)" >&2
  $SUDO debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
  # Smaller image, nothing a container needs.
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  $SUDO tar --numeric-owner -C "$root" -cf "$tarball.part" .
  $SUDO mv "$tarball.part" "$tarball"
fi

echo "build-base-image: importing $tarball as $image" >&2
docker import --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tarball" "$image" >/dev/null
docker image inspect "$image" --format "build-base-image: $image {{.Id}} {{.Size}} bytes" >&2

#!/usr/bin/env bash
# Debian base image for the stdlib toolchains: `debootstrap --variant=minbase` of a suite
# (default bookworm) imported as `local/debian:<suite>` (or the tag given as $2). No registry is
# needed, only Debian's mirror (the same one apt uses on this host). Takes one to two minutes
# (81 s measured on a 2-core host with a nearby mirror: debootstrap downloads and unpacks about 90
# packages); it is run once, and `scripts/test-images.sh` skips it while the image exists.
# debootstrap must run as root: as root the script runs everything directly; otherwise it uses
# sudo, and says so first (without sudo it stops, naming what to do).
# Online alternative: `docker pull debian:bookworm && docker tag debian:bookworm local/debian:bookworm`.
set -euo pipefail
suite="${1:-bookworm}"
tag="${2:-local/debian:$suite}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
  echo "not root: debootstrap needs root, so this script runs it (and apt-get, tar) with sudo" >&2
else
  echo "debootstrap needs root: run this script as root (there is no sudo here)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap (Debian package)..." >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
root="$(mktemp -d)"
trap '$SUDO rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror..." >&2
$SUDO debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# A small image: no apt lists or caches (steps run `apt-get update` in an image stage first),
# and an unprivileged user 1000:1000 like the one steps run as.
$SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
grep -q '^user:' "$root/etc/passwd" || echo 'user:x:1000:1000:user:/workspace:/bin/sh' | $SUDO tee -a "$root/etc/passwd" >/dev/null
grep -q '^user:' "$root/etc/group" || echo 'user:x:1000:' | $SUDO tee -a "$root/etc/group" >/dev/null
$SUDO mkdir -p "$root/workspace"
$SUDO tar -C "$root" --numeric-owner -c . \
  | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "imported $tag"

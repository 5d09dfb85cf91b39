#!/usr/bin/env bash
# A current Rust toolchain image without a registry: the machine's own rustup toolchain (cargo,
# rustc, rustdoc, rustfmt, clippy; its docs left out) copied onto the Debian base
# `local/debian:bookworm` with gcc and libc6-dev for linking, laid out like the official `rust:`
# image (`/usr/local/rust/bin` on PATH). Imported as `local/rust:current` (or the tag given as $1).
# The image trusts the certificate authorities this host trusts (its CA bundle is copied in), so a
# fetch step reaches crates.io through a TLS-intercepting proxy that the host is set up for.
# Needs Debian's mirror from a container (for gcc). About a minute.
# Online alternative: `docker pull rust:1 && docker tag rust:1 local/rust:current`.
set -euo pipefail
tag="${1:-local/rust:current}"
base="${ENGINE_DEBIAN_BASE:-local/debian:bookworm}"
toolchain="${RUST_TOOLCHAIN_DIR:-$(rustc --print sysroot)}"
[ -x "$toolchain/bin/cargo" ] || { echo "no cargo under $toolchain (set RUST_TOOLCHAIN_DIR)" >&2; exit 1; }
for tool in rustfmt cargo-clippy rustdoc; do
  [ -x "$toolchain/bin/$tool" ] || { echo "the toolchain $toolchain lacks $tool" >&2; exit 1; }
done
docker image inspect "$base" >/dev/null 2>&1 || "$(dirname "$0")/import-debian.sh" bookworm "$base"
name="engine-import-rust-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
echo "installing gcc and libc6-dev on $base..." >&2
docker run --name "$name" --network bridge -e DEBIAN_FRONTEND=noninteractive "$base" sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/rust' >&2
echo "copying the toolchain $toolchain..." >&2
tar -C "$toolchain" --exclude ./share/doc --numeric-owner --owner=0 --group=0 -c . | docker cp - "$name:/usr/local/rust"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  docker cp -L /etc/ssl/certs/ca-certificates.crt "$name:/etc/ssl/certs/ca-certificates.crt"
fi
docker commit \
  --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'CMD ["/bin/bash"]' "$name" "$tag" >/dev/null
echo "imported $tag ($(docker run --rm "$tag" rustc --version))"

#!/usr/bin/env bash
# Images the integration tests and the benchmarks use, built locally (there is no registry).
# Imported only when missing: re-importing would orphan the previous image and change its ID
# (and with it every cache key that names it).
set -euo pipefail
cd "$(dirname "$0")"
# An image made by an older import-busybox.sh (PATH=/bin, unlike the real busybox image) is
# imported again, once.
busybox_path() { docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' local/busybox:1 2>/dev/null | grep '^PATH=' || true; }
if ! docker image inspect local/busybox:1 >/dev/null 2>&1 || [ "$(busybox_path)" = "PATH=/bin" ]; then
  ./import-busybox.sh local/busybox:1
fi
# The Debian base of the stdlib toolchain images (engine/tests/stdlib.rs); needs Debian's mirror.
docker image inspect local/debian:bookworm >/dev/null 2>&1 || ./import-debian.sh bookworm local/debian:bookworm
# Current toolchains for the stdlib tests, from this machine's own Rust and Python (no registry).
docker image inspect local/rust:current >/dev/null 2>&1 || ./import-rust.sh local/rust:current
docker image inspect local/python:current >/dev/null 2>&1 || ./import-python.sh local/python:current

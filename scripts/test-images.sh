#!/usr/bin/env bash
# Images the integration tests and the benchmarks use, built locally (there is no registry).
# Imported only when missing: re-importing would orphan the previous image and change its ID
# (and with it every cache key that names it).
set -euo pipefail
cd "$(dirname "$0")"
docker image inspect local/busybox:1 >/dev/null 2>&1 || ./import-busybox.sh local/busybox:1

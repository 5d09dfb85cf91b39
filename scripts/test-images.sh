#!/usr/bin/env bash
# Images the integration tests and the benchmark use, built locally (there is no registry).
set -euo pipefail
cd "$(dirname "$0")"
./import-busybox.sh local/busybox:1

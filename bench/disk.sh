#!/usr/bin/env bash
# Peak disk the engine spends on one step writing a 2 GiB output with a 64m memory limit:
# everything the run touches (workspace, collected outputs, cache, export) lives under one
# private folder, sampled with `du` every 0.2 s.
#   bench/disk.sh [ENGINE_BINARY]   (default: target/debug/engine; ENGINE_TRANSFER is honoured)
set -euo pipefail
engine=$(realpath "${1:-target/debug/engine}")
root=$(mktemp -d /tmp/engine-bench-disk-XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/tmp" "$root/project"
cat > "$root/project/workflow.yml" <<'YAML'
version: 1
defaults: { image: local/busybox:1 }
steps:
  big:
    limits: { memory: 64m }
    run: mkdir -p o && dd if=/dev/zero of=o/big bs=1M count=2048 2>/dev/null
    outputs: [o]
YAML
(cd "$root/project" && TMPDIR="$root/tmp" ENGINE_CACHE_DIR="$root/project/.engine/cache" "$engine" run >/dev/null 2>"$root/err") &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
    used=$(du -s --block-size=1 "$root" 2>/dev/null | cut -f1 || echo 0)
    (( used > peak )) && peak=$used
    sleep 0.2
done
wait "$pid" || { cat "$root/err"; exit 1; }
final=$(du -s --block-size=1 "$root" | cut -f1)
echo "peak $((peak >> 20)) MiB, after the run $((final >> 20)) MiB (2048 MiB output, ${ENGINE_TRANSFER:-auto} transfer)"

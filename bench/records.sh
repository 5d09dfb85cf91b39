#!/usr/bin/env bash
# Run-record benchmark (one command): bench/records.sh [ENGINE_BINARY]
#   A workflow of 50 steps that each take the same 2,000 input files: after one run that executes
#   them, a no-op re-run (every step cached). Prints the size of the record that re-run writes
#   (goal: < 100 KB), its wall time (goal: <= 0.1 s) and `engine plan` on the same workflow.
# Prints median wall times of REPS runs (default 5). ENGINE_BINARY (default: a release build of
# this tree) lets the same measurement run against another build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-5}"
. bench/lib.sh
if [ -n "${1:-}" ]; then ENGINE=$(realpath "$1"); fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ENGINE_CACHE_DIR="$work/cache"

p="$work/p"; mkdir -p "$p/src"
for f in $(seq 1 2000); do echo "file $f" > "$p/src/f$f.txt"; done
{
  echo "version: 1"; echo "defaults: { image: $IMAGE }"; echo "steps:"
  for s in $(seq 1 50); do echo "  s$s: { inputs: ['src/**'], run: 'ls src | wc -l > n', outputs: [n] }"; done
} > "$p/workflow.yml"
(cd "$p" && "$ENGINE" run >/dev/null 2>&1) || { echo "engine failed on the workflow; run it by hand in $p" >&2; exit 1; }
noop=$(cd "$p" && measure "$ENGINE" run)
plan=$(cd "$p" && measure "$ENGINE" plan)
# The record of the last no-op re-run, and everything in its folder (logs too).
last=$(ls -d "$p"/.engine/runs/*/ | sort | tail -n 1)
record=$(stat -c %s "$last/record.json")
folder=$(du -sb "$last" | cut -f1)
runs=$(ls -d "$p"/.engine/runs/*/ | wc -l)
all=$(du -sb "$p/.engine/runs" | cut -f1)

echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf 'no-op re-run, 50 steps x 2,000 files: record.json %d bytes (goal < 100 KB), run folder %d bytes\n' "$record" "$folder"
printf 'no-op re-run wall time:                %.3f s (goal <= 0.1 s)\n' "$noop"
printf 'engine plan, same workflow:            %.3f s\n' "$plan"
printf 'records after %d runs:                 %d folders, %d bytes in .engine/runs\n' "$((REPS + 1))" "$runs" "$all"

#!/usr/bin/env bash
# Cache benchmark (one command): bench/cache.sh
#   noop50:  no-op re-run of 50 steps whose inputs total 2,000 files (goal: under 0.3 s)
#   noop100k: no-op re-run of one step over 100,000 small files, against `git status` on the same
#            tree (the stat floor; goal: within 2x)
#   cold hashing throughput over the 100,000 files, against `sha256sum`
# Prints median wall times of REPS runs (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-5}"
. bench/lib.sh
cargo build -q --release -p cache --example hashbench
HASHBENCH="$PWD/target/release/examples/hashbench"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ENGINE_CACHE_DIR="$work/cache"


# --- 50 steps over 2,000 files ----------------------------------------------------------------
p50="$work/p50"; make_p50 "$p50"
(cd "$p50" && "$ENGINE" run >/dev/null 2>&1) || { echo "engine failed on the 50-step workflow" >&2; exit 1; }
noop50=$(cd "$p50" && measure "$ENGINE" run)

# --- one step over 100,000 files ----------------------------------------------------------------
p100k="$work/p100k"; mkdir -p "$p100k/big"
python3 - "$p100k/big" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
    for f in range(1000):
        with open(f"{root}/d{d}/f{f}.txt", "w") as fh:
            fh.write(f"small file {d}/{f}\n")
PY
printf 'version: 1\nsteps:\n  count: { image: %s, inputs: ["big/**"], run: "find big -type f | wc -l > n", outputs: [n] }\n' "$IMAGE" > "$p100k/workflow.yml"
(cd "$p100k" && git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm tree && git status --porcelain >/dev/null)
(cd "$p100k" && "$ENGINE" run >/dev/null 2>&1) || { echo "engine failed on the 100k-file workflow" >&2; exit 1; }
noop100k=$(cd "$p100k" && measure "$ENGINE" run)
gitstatus=$(cd "$p100k" && measure git status --porcelain)

# --- cold hashing --------------------------------------------------------------------------------
cold_ms=$("$HASHBENCH" "$p100k/big" | python3 -c 'import sys, json
for line in sys.stdin:
    d = json.loads(line)
    if "cold_ms" in d: print(d["cold_ms"])')
sha=$(cd "$p100k" && measure sh -c 'find big -type f -print0 | xargs -0 sha256sum')
bytes=$(du -sb "$p100k/big" | cut -f1)

echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf 'no-op re-run, 50 steps / 2,000 files:   %.3f s (goal < 0.3 s)\n' "$noop50"
printf 'no-op re-run, 1 step / 100,000 files:   %.3f s; git status %.3f s; ratio %.2f (goal <= 2)\n' \
  "$noop100k" "$gitstatus" "$(echo "$noop100k / $gitstatus" | bc -l)"
printf 'cold hashing of 100,000 files (%s bytes): engine %.3f s, sha256sum %.3f s; ratio %.2f\n' \
  "$bytes" "$(echo "$cold_ms / 1000" | bc -l)" "$sha" "$(echo "$cold_ms / 1000 / $sha" | bc -l)"

#!/usr/bin/env bash
# Remote cache benchmark (one command): bench/remote.sh
# The 50-step / 2,000-file workflow of bench/cache.sh against Debian's docker-registry on
# 127.0.0.1 (started here, plain HTTP on loopback):
#   noop:    warm local no-op re-run (the local store has every entry);
#   cold:    a cold run (empty cache dir) without a remote cache, and the same with
#            --remote-cache into an empty repository: the upload overhead (goal <= 10% of the
#            run's wall time);
#   remote:  a cold machine (empty cache dir, the workflow copied to another path) with a warm
#            registry: every step downloaded, no container (goal <= 2 x noop + the bytes'
#            transfer time on loopback, measured here with curl); also against the per-request
#            floor (the manifests, and the blobs not embedded in them, fetched with curl).
# Prints median wall times of REPS runs (default 3) and the two ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
. bench/lib.sh
REGISTRY=/usr/bin/docker-registry
[ -x "$REGISTRY" ] || { echo "the remote benchmark needs $REGISTRY (Debian's docker-registry)" >&2; exit 1; }
command -v curl >/dev/null || { echo "the remote benchmark needs curl" >&2; exit 1; }
work="$(mktemp -d)"
reg_pid=""
http_pid=""
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  [ -n "$http_pid" ] && kill "$http_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# --- the registry ------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat > "$work/registry/config.yml" <<EOF
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/registry/data } }
http: { addr: 127.0.0.1:$port }
EOF
"$REGISTRY" serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { echo "the registry did not start" >&2; cat "$work/registry/log" >&2; exit 1; }
export DOCKER_CONFIG="$work/docker-config"; mkdir -p "$DOCKER_CONFIG"

# --- 50 steps over 2,000 files (bench/lib.sh, as bench/cache.sh) -------------------------------
p50="$work/p50"; make_p50 "$p50"

# Warm local no-op.
export ENGINE_CACHE_DIR="$work/warm-cache"
(cd "$p50" && "$ENGINE" run >/dev/null 2>&1) || { echo "engine failed on the 50-step workflow" >&2; exit 1; }
sync
noop=$(cd "$p50" && measure "$ENGINE" run)

# Cold runs, without and with uploads (a fresh cache dir and repository each time).
n=0
cold_local() { n=$((n + 1)); ENGINE_CACHE_DIR="$work/cold-local-$n" "$ENGINE" run >/dev/null 2>&1; }
cold_upload() {
  n=$((n + 1))
  ENGINE_CACHE_DIR="$work/cold-up-$n" "$ENGINE" run --remote-cache "oci://127.0.0.1:$port/bench/up$n" >/dev/null 2>&1
}
# Interleaved (one of each per round, the disk synced before each) so that a change in the
# machine's load during the benchmark weighs on both alike.
: > "$work/cold.times"; : > "$work/cold_up.times"
cd "$p50"
for _ in $(seq 1 "$REPS"); do
  sync; t0=$(now); cold_local || true; t1=$(now); echo "$t1 - $t0" | bc -l >> "$work/cold.times"
  sync; t0=$(now); cold_upload || true; t1=$(now); echo "$t1 - $t0" | bc -l >> "$work/cold_up.times"
done
cd - >/dev/null
cold=$(median < "$work/cold.times")
cold_up=$(median < "$work/cold_up.times")

# The warm registry: one repository filled by a run; then cold machines read from it.
(cd "$p50" && ENGINE_CACHE_DIR="$work/filler" "$ENGINE" run --remote-cache "oci://127.0.0.1:$port/bench/warm" >/dev/null 2>&1)
# Each machine's copy of the workflow (another path) is made before the clock starts, and the
# disk is synced: what is timed is the engine's run alone, not the copy or earlier write-back.
for i in $(seq 1 "$REPS"); do mkdir -p "$work/machine-$i" && cp -r "$p50/d"* "$p50/workflow.yml" "$work/machine-$i/"; done
sync
m=0
cold_machine() {
  m=$((m + 1))
  (cd "$work/machine-$m" && ENGINE_CACHE_DIR="$work/machine-cache-$m" "$ENGINE" run --remote-cache "oci://127.0.0.1:$port/bench/warm" --output json \
    > "$work/machine-$m.json" 2>/dev/null)
}
: > "$work/remote.times"
for _ in $(seq 1 "$REPS"); do
  sync; t0=$(now); cold_machine || true; t1=$(now); echo "$t1 - $t0" | bc -l >> "$work/remote.times"
done
remote=$(median < "$work/remote.times")
remote_range=$(sort -n "$work/remote.times" | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.3f-%.3f", lo, hi}')
bytes=$(grep '"event":"remote_cache"' "$work/machine-1.json" | python3 -c 'import sys, json; print(json.loads(sys.stdin.read())["bytes_down"])')
hits=$(grep '"event":"remote_cache"' "$work/machine-1.json" | python3 -c 'import sys, json; print(json.loads(sys.stdin.read())["hits"])')

# Loopback transfer of those bytes: curl of a 64 MiB file, scaled.
head -c $((64 << 20)) /dev/urandom > "$work/blob"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work" >"$work/http.log" 2>&1 &
http_pid=$!
hport=""
for _ in $(seq 1 100); do hport=$(grep -o 'port [0-9]*' "$work/http.log" | head -1 | awk '{print $2}' || true); [ -n "$hport" ] && break; sleep 0.1; done
t=$(measure curl -fs -o /dev/null "http://127.0.0.1:$hport/blob")
kill "$http_pid" 2>/dev/null || true
http_pid=""
transfer=$(echo "$t * $bytes / (64 * 1048576)" | bc -l)

# The per-request floor: what any reader of the format must fetch from the same registry with
# curl, 4 at a time: every manifest (by tag) and every blob whose content is not embedded in
# its descriptor (docs/remote-cache.md, `data`).
base="http://127.0.0.1:$port/v2/bench/warm"
curl -fs "$base/tags/list?n=1000" | python3 -c 'import sys, json; print("\n".join(json.load(sys.stdin)["tags"]))' \
  | sed "s|^|$base/manifests/|" > "$work/urls"
xargs -n 1 curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' < "$work/urls" | python3 -c '
import sys, json
dec = json.JSONDecoder(); text = sys.stdin.read(); i = 0; seen = set()
while i < len(text):
    m, i = dec.raw_decode(text, i)
    for d in [m["config"]] + m["layers"]:
        if "data" not in d and d["digest"] not in seen:
            seen.add(d["digest"]); print(sys.argv[1] + "/blobs/" + d["digest"])
    while i < len(text) and text[i].isspace(): i += 1
' "$base" >> "$work/urls"
raw_fetch() { xargs -P 4 -n 25 curl -fs -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' < "$work/urls"; }
raw=$(measure raw_fetch)
requests=$(wc -l < "$work/urls")

echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf 'warm local no-op, 50 steps / 2,000 files:          %.3f s\n' "$noop"
printf 'cold run, no remote cache:                         %.3f s\n' "$cold"
printf 'cold run, uploading to an empty registry:          %.3f s; overhead %.1f%% of the run (goal <= 10%%)\n' \
  "$cold_up" "$(echo "100 * ($cold_up - $cold) / $cold_up" | bc -l)"
printf 'cold machine, warm registry (%s hits, %s bytes):   %.3f s (%s); goal 2 x %.3f + %.4f s transfer; ratio %.2f (goal <= 1)\n' \
  "$hits" "$bytes" "$remote" "$remote_range" "$noop" "$transfer" "$(echo "$remote / (2 * $noop + $transfer)" | bc -l)"
printf 'the %s manifests and blobs a reader needs, fetched with curl (4 at a time): %.3f s; cold machine / (2 x no-op + that) = %.2f\n' \
  "$requests" "$raw" "$(echo "$remote / (2 * $noop + $raw)" | bc -l)"

#!/usr/bin/env bash
# Benchmark: the engine against a plain `docker run` loop with the same isolation flags, on
#   chain20: 20 steps, each needing the previous one (sequential by construction);
#   fan50:   50 independent steps (the engine runs them in parallel up to --jobs = CPUs; the
#            docker loop gets the same parallelism through `xargs -P`).
# Prints wall times (median of $REPS runs) and the ratio engine/docker. One command:
#   bench/run.sh            (REPS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
. bench/lib.sh
JOBS="$(nproc)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- workflows ---------------------------------------------------------------------------
{
  echo "version: 1"; echo "defaults: { image: $IMAGE }"; echo "steps:"
  for i in $(seq 1 20); do
    echo "  s$i:"
    [ "$i" -gt 1 ] && echo "    needs: [s$((i - 1))]"
    echo "    run: echo step $i"
  done
} > "$work/chain20.yml"
{
  echo "version: 1"; echo "defaults: { image: $IMAGE }"; echo "steps:"
  for i in $(seq 1 50); do echo "  s$i: { run: echo step $i }"; done
} > "$work/fan50.yml"

# The engine's defaults, spelled out for docker run (a bind-mounted workspace, as the engine's
# local fast path does).
docker_step() {
  local ws; ws="$(mktemp -d "$work/ws.XXXXXX")"
  chown 1000:1000 "$ws" 2>/dev/null || chmod 777 "$ws"
  docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges \
    --user 1000:1000 --memory 1g --memory-swap 1g --cpus 1 --pids-limit 256 \
    --tmpfs /tmp:rw,nosuid,nodev,size=64m,mode=1777 -v "$ws:/workspace" -w /workspace \
    --label engine.bench=1 "$IMAGE" /bin/sh -c "echo step $1" >/dev/null
  rm -rf "$ws"
}
export -f docker_step; export work IMAGE

# --no-cache: this compares executing steps (results are still stored, a cost the engine pays).
export ENGINE_CACHE_DIR="$work/cache"
engine_chain() { "$ENGINE" run "$work/chain20.yml" --no-cache --out "$work/out" >/dev/null 2>&1; }
engine_fan() { "$ENGINE" run "$work/fan50.yml" --no-cache --jobs "$JOBS" --out "$work/out" >/dev/null 2>&1; }
docker_chain() { for i in $(seq 1 20); do docker_step "$i"; done; }
docker_fan() { seq 1 50 | xargs -P "$JOBS" -I{} bash -c 'docker_step {}'; }

engine_chain || { echo "engine failed on chain20; run it by hand: $ENGINE run $work/chain20.yml" >&2; exit 1; }

ec=$(measure engine_chain); dc=$(measure docker_chain)
ef=$(measure engine_fan); df=$(measure docker_fan)
ratio() { echo "scale=2; $1 / $2" | bc -l; }
per() { echo "scale=1; 1000 * $1 / $2" | bc -l; }

echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf '%-8s %12s %12s %18s\n' workload engine_s docker_s 'ratio (engine/docker)'
printf '%-8s %12.2f %12.2f %18s\n' chain20 "$ec" "$dc" "$(ratio "$ec" "$dc")"
printf '%-8s %12.2f %12.2f %18s\n' fan50 "$ef" "$df" "$(ratio "$ef" "$df")"
echo "per step, chain20: engine $(per "$ec" 20) ms, docker run $(per "$dc" 20) ms"

#!/usr/bin/env bash
# Dockerfile image benchmark (one command): bench/dockerfile.sh
# A Dockerfile image whose context holds a 256 MiB file and 500 small files, built by
# `engine images build` and by `docker build` (classic builder, which sends the context as the
# engine does). Measured, as medians of REPS runs (default 3):
#   cold:      a build from nothing (engine: its image removed; docker: --no-cache);
#   unrelated: a rebuild after editing a file the Dockerfile never copies (the README): the engine
#              keys on what COPY reads and finds its image; docker sends the whole context again
#              and reuses its layer cache;
# and the peak memory (max RSS) of each client during a cold build: the context is streamed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
. bench/lib.sh
command -v /usr/bin/time >/dev/null || { echo "the benchmark needs GNU time (/usr/bin/time)" >&2; exit 1; }
work="$(mktemp -d)"
name="bench-df-$$"
dangling_before="$(docker images -q --no-trunc --filter dangling=true | sort)"
cleanup() {
  docker images -q --filter "label=engine.image=$name-app" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  docker images -q --filter "reference=$name-docker" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc --filter dangling=true | sort) \
    | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/app"
head -c 256M /dev/urandom > "$work/big.bin"
for i in $(seq 1 500); do echo "file $i of $name" > "$work/app/f$i.txt"; done
echo "readme" > "$work/README.md"
cat > "$work/Dockerfile" <<EOF
FROM $IMAGE
COPY app/ /app/
COPY big.bin /big.bin
EOF
cat > "$work/workflow.yml" <<YAML
version: 1
name: $name
images:
  $name-app: { dockerfile: Dockerfile, context: . }
steps:
  use: { image: $name-app, run: "true" }
YAML

remove_engine_image() { docker images -q --filter "label=engine.image=$name-app" | xargs -r docker rmi -f >/dev/null 2>&1 || true; }
engine_build() { (cd "$work" && "$ENGINE" images build); }
# measure_after PREPARE CMD... -> median wall seconds of REPS runs of CMD, each after PREPARE
# (untimed: removing the engine's image is not part of a build).
measure_after() {
  local prepare="$1" t0 t1 i
  shift
  for i in $(seq 1 "$REPS"); do "$prepare"; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc -l; done | median
}
docker_cold() { DOCKER_BUILDKIT=0 docker build -q --no-cache -t "$name-docker" "$work"; }
docker_warm() { DOCKER_BUILDKIT=0 docker build -q -t "$name-docker" "$work"; }
edit_readme() { date +%s%N > "$work/README.md"; }
# Peak RSS (KiB) of a command run in the context folder.
peak() { (cd "$work" && /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null 2>&1); cat "$work/rss"; }

engine_build >/dev/null 2>&1 || { echo "engine images build failed: cd $work && $ENGINE images build" >&2; exit 1; }
docker_cold >/dev/null 2>&1 || { echo "docker build failed" >&2; exit 1; }
ec=$(measure_after remove_engine_image engine_build)
dc=$(measure docker_cold)
eu=$(measure_after edit_readme engine_build)
du=$(measure_after edit_readme docker_warm)
remove_engine_image
em=$(peak "$ENGINE" images build)
dm=$(peak env DOCKER_BUILDKIT=0 docker build -q --no-cache -t "$name-docker" .)
echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf 'cold build, 256 MiB + 500 files context: engine %.2f s, docker build --no-cache %.2f s; ratio %.2f\n' "$ec" "$dc" "$(echo "$ec / $dc" | bc -l)"
printf 'after editing an unrelated file: engine %.3f s (image kept), docker build (warm cache) %.3f s; ratio %.3f\n' "$eu" "$du" "$(echo "$eu / $du" | bc -l)"
printf 'peak client memory of a cold build: engine %d MiB, docker CLI %d MiB\n' "$((em / 1024))" "$((dm / 1024))"

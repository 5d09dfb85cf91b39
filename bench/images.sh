#!/usr/bin/env bash
# Images benchmark (one command): bench/images.sh
# A cached rebuild of a 3-image, 8-stage workflow (`engine images build`, every stage found by its
# key) against `docker build` of the equivalent Dockerfiles with a warm layer cache.
# Prints median wall times of REPS runs (default 5) and the ratio engine/docker.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-5}"
. bench/lib.sh
work="$(mktemp -d)"
name="bench-img-$$"
dangling_before="$(docker images -q --no-trunc --filter dangling=true | sort)"
cleanup() {
  docker images -q --filter "reference=$name/*" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  for i in a b c; do docker images -q --filter "label=engine.image=$name-$i" | xargs -r docker rmi -f >/dev/null 2>&1 || true; done
  docker images -q --filter "reference=$name-docker-*" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  # The classic builder leaves the layers of the docker side's stages behind, untagged.
  comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc --filter dangling=true | sort) \
    | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/src"
for i in 1 2 3 4 5; do echo "source $i $name" > "$work/src/f$i.txt"; done

# 3 images, 8 stages: a (3 stages), b (3 stages), c (2 stages).
cat > "$work/workflow.yml" <<YAML
version: 1
name: $name
images:
  $name-a:
    stages:
      - { name: s1, from: $IMAGE, copy: [{ src: "src/f1.txt", dst: /opt/f1.txt }], run: ["cat /opt/f1.txt > /opt/a1"] }
      - { name: s2, from: s1, run: ["cat /opt/a1 /opt/a1 > /opt/a2"] }
      - { name: s3, from: $IMAGE, copy: [{ from: s2, src: /opt/a2, dst: /opt/a2 }] }
  $name-b:
    stages:
      - { name: s1, from: $IMAGE, copy: [{ src: "src/f2.txt", dst: /opt/f2.txt }], run: ["cat /opt/f2.txt > /opt/b1"] }
      - { name: s2, from: $IMAGE, copy: [{ src: "src/f3.txt", dst: /opt/f3.txt }], run: ["cat /opt/f3.txt > /opt/b2"] }
      - { name: s3, from: $IMAGE, copy: [{ from: s1, src: /opt/b1, dst: /opt/b1 }, { from: s2, src: /opt/b2, dst: /opt/b2 }] }
  $name-c:
    stages:
      - { name: s1, from: $IMAGE, copy: [{ src: "src/f4.txt", dst: /opt/f4.txt }], run: ["cat /opt/f4.txt > /opt/c1"] }
      - { name: s2, from: $IMAGE, copy: [{ from: s1, src: /opt/c1, dst: /opt/c1 }] }
steps:
  use: { image: $name-a, run: "true" }
YAML
# The same, as Dockerfiles for the classic builder.
cat > "$work/a.Dockerfile" <<EOF2
FROM $IMAGE AS s1
COPY src/f1.txt /opt/f1.txt
RUN cat /opt/f1.txt > /opt/a1
FROM s1 AS s2
RUN cat /opt/a1 /opt/a1 > /opt/a2
FROM $IMAGE
COPY --from=s2 /opt/a2 /opt/a2
EOF2
cat > "$work/b.Dockerfile" <<EOF2
FROM $IMAGE AS s1
COPY src/f2.txt /opt/f2.txt
RUN cat /opt/f2.txt > /opt/b1
FROM $IMAGE AS s2
COPY src/f3.txt /opt/f3.txt
RUN cat /opt/f3.txt > /opt/b2
FROM $IMAGE
COPY --from=s1 /opt/b1 /opt/b1
COPY --from=s2 /opt/b2 /opt/b2
EOF2
cat > "$work/c.Dockerfile" <<EOF2
FROM $IMAGE AS s1
COPY src/f4.txt /opt/f4.txt
RUN cat /opt/f4.txt > /opt/c1
FROM $IMAGE
COPY --from=s1 /opt/c1 /opt/c1
EOF2

engine_build() { (cd "$work" && "$ENGINE" images build); }
docker_build() { for i in a b c; do DOCKER_BUILDKIT=0 docker build -q -f "$work/$i.Dockerfile" -t "$name-docker-$i" "$work"; done; }
engine_build >/dev/null 2>&1 || { echo "engine images build failed: cd $work && $ENGINE images build" >&2; exit 1; }
docker_build >/dev/null 2>&1 || { echo "docker build failed" >&2; exit 1; }
e=$(measure engine_build)
d=$(measure docker_build)
echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, docker $(docker version -f '{{.Server.Version}}'), $(date -u +%F)"
printf 'cached rebuild, 3 images / 8 stages: engine %.3f s, docker build (warm layer cache) %.3f s; ratio %.2f\n' "$e" "$d" "$(echo "$e / $d" | bc -l)"

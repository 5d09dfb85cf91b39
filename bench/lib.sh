# Shared by the benchmark scripts: the test image, a release build, and median timing.
# Sourced from the repository root with REPS set.
IMAGE=local/busybox:1
docker image inspect "$IMAGE" >/dev/null 2>&1 || scripts/import-busybox.sh "$IMAGE"
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null 2>&1 || { echo "the benchmarks need bc" >&2; exit 1; }
# ENGINE_BINARY: measure another build (for example a release build of an earlier commit, for a
# before/after table); by default a release build of this tree.
if [ -n "${ENGINE_BINARY:-}" ]; then
  ENGINE="$(realpath "$ENGINE_BINARY")"
else
  cargo build -q --release -p engine
  ENGINE="$PWD/target/release/engine"
fi

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# measure CMD... -> median wall seconds of REPS runs (output discarded)
measure() {
  local t0 t1 i
  for i in $(seq 1 "$REPS"); do t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc -l; done | median
}
# make_p50 DIR: the 50-step workflow whose inputs total 2,000 files (40 per step), in DIR.
make_p50() {
  local dir="$1" d f
  mkdir -p "$dir"
  for d in $(seq 1 50); do
    mkdir -p "$dir/d$d"
    for f in $(seq 1 40); do echo "file $d/$f" > "$dir/d$d/f$f.txt"; done
  done
  {
    echo "version: 1"; echo "defaults: { image: $IMAGE }"; echo "steps:"
    for d in $(seq 1 50); do echo "  s$d: { inputs: ['d$d/**'], run: 'cat d$d/* | wc -c > n', outputs: [n] }"; done
  } > "$dir/workflow.yml"
}

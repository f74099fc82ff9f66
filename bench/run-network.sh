#!/usr/bin/env bash
# What a RUN step costs, by network mode: 20 `RUN echo N` steps built cold (--no-cache, one at a time), with
# the default network (a namespace of the step's own through slirp4netns), --network=none and
# --network=host. It prints the median of RUNS runs of each, the cost per step, and each mode's ratio to
# none: the step's network is the difference. With DOCKER set to a docker CLI whose daemon has
# localbase:latest (../shared/peers/setup-current.sh), BuildKit's default network is timed beside it.
#
#   cargo build --release && bash bench/run-network.sh
#
# Run as root. Environment: KILN (default target/release/kiln), RUNS (default 5), DOCKER (unset: kiln only),
# KEEP=1 keeps the work directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KILN=${KILN:-$HERE/../target/release/kiln}
RUNS=${RUNS:-5}
STEPS=20
WORK=$(mktemp -d /tmp/kiln-bench-net.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

BASE=$(bash "$HERE/../examples/make-base.sh")
for mode in default none host; do
  mkdir -p "$WORK/$mode"
  {
    echo "FROM busybox"
    for i in $(seq "$STEPS"); do
      case $mode in
        default) echo "RUN echo $i" ;;
        *) echo "RUN --network=$mode echo $i" ;;
      esac
    done
  } > "$WORK/$mode/Dockerfile"
done

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

time_kiln() {
  local mode=$1 start
  for _ in $(seq "$RUNS"); do
    start=$(now_ms)
    "$KILN" --root "$WORK/root" build -q --no-cache --max-parallelism 1 --allow network.host \
      --build-context busybox="$BASE" "$WORK/$mode" > /dev/null
    echo $(( $(now_ms) - start ))
  done | median
}

# The base is copied into the store once, outside the timings.
"$KILN" --root "$WORK/root" build -q --build-context busybox="$BASE" "$WORK/none" > /dev/null

declare -A ms
for mode in none default host; do
  ms[$mode]=$(time_kiln "$mode")
done
printf '%-28s %10s %12s %14s\n' "kiln, $STEPS RUN steps" "median ms" "ms per step" "ratio to none"
for mode in none default host; do
  printf '%-28s %10d %12.1f %14.2f\n' "--network=$mode" "${ms[$mode]}" \
    "$(echo "${ms[$mode]} / $STEPS" | bc -l)" "$(echo "${ms[$mode]} / ${ms[none]}" | bc -l)"
done

if [ -n "${DOCKER:-}" ]; then
  sed 's/^FROM busybox/FROM localbase:latest/' "$WORK/default/Dockerfile" > "$WORK/default/Dockerfile.docker"
  docker_ms=$(for _ in $(seq "$RUNS"); do
    start=$(now_ms)
    "$DOCKER" buildx build -q --no-cache -f "$WORK/default/Dockerfile.docker" "$WORK/default" > /dev/null
    echo $(( $(now_ms) - start ))
  done | median)
  printf '%-28s %10d %12.1f %14s\n' "BuildKit, default network" "$docker_ms" \
    "$(echo "$docker_ms / $STEPS" | bc -l)" "kiln/BuildKit $(echo "${ms[default]} / $docker_ms" | bc -l | cut -c1-4)"
fi

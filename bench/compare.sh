#!/usr/bin/env bash
# Side-by-side build times: kiln (release build) against docker 20.10's BuildKit, and buildah 1.28, on the
# workloads of the peers' README table. Each cell is the median wall time of RUNS runs (default 3) of the
# build command alone; preparation (emptying caches, loading the base image, editing a file) is not timed.
#
#   PEERS=/tmp/peers bash bench/compare.sh
#
# Needs the peers (PEERS=/tmp/peers bash /work/shared/peers/setup.sh): dockerd, buildah, and the busybox OCI
# layout $PEERS/base-oci. Run as root. Everything stays on this machine: the base image comes from that
# layout (kiln, buildah) or docker's own store (localbase:latest); no build step uses the network.
# Environment: KILN (default target/release/kiln beside this script), DOCKER (default /usr/bin/docker),
# RUNS (default 3), BUILDAH=0 to leave buildah out, KEEP=1 to keep the work directory and logs.
#
# What the columns mean:
# - cold: nothing cached from earlier builds.
#     kiln:     a fresh, empty --root holding only the loaded base image.
#     BuildKit: `docker rmi` of the output tag and `docker builder prune -af` (all build cache, including the
#               context transfer cache, is gone; the base image stays in docker's image store) before a
#               plain `docker build` (no --no-cache needed once the cache is empty).
#     buildah:  `buildah rmi -a -f` on a storage root of its own, then the base pulled back from the OCI
#               layout, before `buildah bud --layers` (layer cache on, as for a rebuild; --jobs 2).
# - no-change rebuild: the same build again right after one (untimed) build of the same context.
# - one file changed: one of the 20,000 files gets new content of the same size before each timed build.
# Peak RSS is GNU time's maximum resident set size of the kiln process (the largest of the runs).
# The work directory (contexts, kiln and buildah stores) is removed at the end, with the docker tags
# this script made; docker's build cache is left pruned or warm, as the last run left it.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KILN=${KILN:-$HERE/../target/release/kiln}
DOCKER=${DOCKER:-/usr/bin/docker}
PEERS=${PEERS:-/tmp/peers}
RUNS=${RUNS:-3}
KEEP=${KEEP:-0}
BUILDAH=${BUILDAH:-1}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PEERS/containers.conf}

die() { echo "compare: $*" >&2; exit 2; }
[ -x "$KILN" ] || die "no kiln binary at $KILN (cargo build --release -p kiln, or set KILN)"
[ -x "$DOCKER" ] || die "no docker CLI at $DOCKER (run the peers' setup.sh)"
[ -f "$PEERS/base-oci/index.json" ] || die "no base layout at $PEERS/base-oci (run the peers' setup.sh)"
"$DOCKER" image inspect localbase:latest >/dev/null 2>&1 || die "docker has no localbase:latest (run the peers' setup.sh)"
[ -x /usr/bin/time ] || die "needs GNU time at /usr/bin/time (apt-get install time)"
if [ "$BUILDAH" = 1 ] && ! command -v buildah >/dev/null; then BUILDAH=0; fi

W=$(mktemp -d /tmp/kiln-bench.XXXXXX)
LOG=$W/log
mkdir -p "$LOG"
TAG=kiln-bench
KROOT=$W/kiln-root
BROOT=$W/buildah-root
BRUN=$W/buildah-run

cleanup() {
    set +e
    for t in parallel nosleep copy; do "$DOCKER" rmi -f "$TAG-$t:latest" >/dev/null 2>&1; done
    if [ "$BUILDAH" = 1 ] && [ -d "$BROOT" ]; then
        buildah_ rm -a >/dev/null 2>&1
        buildah_ rmi -a -f >/dev/null 2>&1
        # containers-storage may leave its overlay home mounted: unmount only what lies under our work dir.
        findmnt -rn -o TARGET | grep "^$W/" | sort -r | while read -r m; do umount "$m" 2>/dev/null; done
    fi
    if [ "$KEEP" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------------ contexts
mkdir -p "$W/parallel" "$W/nosleep" "$W/copy"
cat > "$W/parallel/Dockerfile" <<'EOF'
FROM localbase:latest AS a
RUN sleep 2 && echo a > /a
FROM localbase:latest AS b
RUN sleep 2 && echo b > /b
FROM localbase:latest
COPY --from=a /a /a
COPY --from=b /b /b
EOF
cat > "$W/nosleep/Dockerfile" <<'EOF'
FROM localbase:latest AS a
RUN echo a > /a
FROM localbase:latest AS b
RUN echo b > /b
FROM localbase:latest
COPY --from=a /a /a
COPY --from=b /b /b
RUN cat /a /b > /ab
EOF
cat > "$W/copy/Dockerfile" <<'EOF'
FROM localbase:latest
COPY data /data/
EOF
# 20,000 files of 10 KiB of (seeded) random bytes, in 100 directories: 205 MB that does not compress.
python3 - "$W/copy/data" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
for d in range(100):
    os.makedirs(f"{root}/d{d:03}")
    for f in range(200):
        with open(f"{root}/d{d:03}/f{f:03}.bin", "wb") as out:
            out.write(rng.randbytes(10240))
EOF
CHANGED=$W/copy/data/d050/f100.bin
change_one_file() { python3 -c "import os,sys; open(sys.argv[1],'wb').write(os.urandom(10240))" "$CHANGED"; }

# --------------------------------------------------------------------------------------------- the engines
kiln_() { "$KILN" --root "$KROOT" "$@"; }
kiln_cold() {
    rm -rf "$KROOT"
    local id
    id=$(kiln_ load -i "$PEERS/base-oci" | sed -n 's/^Loaded image ID: //p' | head -1)
    kiln_ tag "$id" localbase:latest >/dev/null
}
docker_cold() {
    "$DOCKER" rmi -f "$TAG-$1:latest" >/dev/null 2>&1 || true
    "$DOCKER" builder prune -af >/dev/null
}
buildah_() { buildah --root "$BROOT" --runroot "$BRUN" --storage-driver overlay "$@"; }
buildah_cold() {
    if [ -d "$BROOT" ]; then buildah_ rmi -a -f >/dev/null 2>&1 || true; fi
    buildah_ pull -q "oci:$PEERS/base-oci:latest" >/dev/null
    buildah_ tag "$(buildah_ images -q | head -1)" localbase:latest
}
# build_cmd ENGINE WORKLOAD: the build command, in CMD.
build_cmd() {
    case $1 in
        kiln) CMD=("$KILN" --root "$KROOT" build --progress=plain -t "$TAG-$2" "$W/$2") ;;
        docker) CMD=(env DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain -t "$TAG-$2" "$W/$2") ;;
        buildah) CMD=(buildah --root "$BROOT" --runroot "$BRUN" --storage-driver overlay bud --layers --jobs 2
                      -t "$TAG-$2" "$W/$2") ;;
    esac
}
untimed_build() { build_cmd "$1" "$2"; "${CMD[@]}" >>"$LOG/$1-$2.log" 2>&1; }

# ----------------------------------------------------------------------------------------------- measuring
# time_run ENGINE WORKLOAD: one build; its wall seconds go to $W/times and, for kiln, GNU time's peak RSS (KiB,
# the largest of the process and the processes it waited for) to $W/rss.
time_run() {
    local start end
    build_cmd "$1" "$2"
    start=$(date +%s.%N)
    if ! /usr/bin/time -f '%M' -o "$W/rss.one" "${CMD[@]}" >>"$LOG/$1-$2.log" 2>&1; then
        echo "compare: $1 build of $2 failed; log:" >&2
        tail -20 "$LOG/$1-$2.log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    echo "$end - $start" | bc >>"$W/times"
    if [ "$1" = kiln ]; then tail -1 "$W/rss.one" >>"$W/rss"; fi
}

median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
range() { sort -n "$1" | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

declare -A RESULT RANGE PEAK
# measure ENGINE SCENARIO WORKLOAD
measure() {
    local engine=$1 scenario=$2 workload=$3 i
    : >"$W/times"; : >"$W/rss"
    case $scenario in
        cold)
            for i in $(seq "$RUNS"); do "${engine}_cold" "$workload"; time_run "$engine" "$workload"; done ;;
        rebuild)
            untimed_build "$engine" "$workload"
            for i in $(seq "$RUNS"); do time_run "$engine" "$workload"; done ;;
        changed)
            untimed_build "$engine" "$workload"
            for i in $(seq "$RUNS"); do change_one_file; time_run "$engine" "$workload"; done ;;
    esac
    RESULT[$engine/$scenario/$workload]=$(median "$W/times")
    RANGE[$engine/$scenario/$workload]=$(range "$W/times")
    if [ -s "$W/rss" ]; then PEAK[$scenario/$workload]=$(sort -n "$W/rss" | tail -1); fi
    printf '  %-8s %-8s %-9s median %6.2f s  (%s)\n' "$engine" "$scenario" "$workload" \
        "${RESULT[$engine/$scenario/$workload]}" "${RANGE[$engine/$scenario/$workload]}" >&2
}

engines=(kiln docker)
[ "$BUILDAH" = 1 ] && engines+=(buildah)
ROWS=("cold parallel" "rebuild parallel" "cold nosleep" "cold copy" "rebuild copy" "changed copy")
for engine in "${engines[@]}"; do
    echo "measuring $engine ($RUNS runs each)..." >&2
    if [ "$engine" != docker ]; then "${engine}_cold" parallel; fi  # a store to start from
    for row in "${ROWS[@]}"; do
        # shellcheck disable=SC2086
        measure $engine $row
    done
done

label() {
    case "$1" in
        "cold parallel") echo "multi-stage, 2 parallel stages with sleep 2, cold" ;;
        "rebuild parallel") echo "same, no-change rebuild" ;;
        "cold nosleep") echo "multi-stage without sleeps, cold" ;;
        "cold copy") echo "COPY of 20,000 files / 205 MB, cold" ;;
        "rebuild copy") echo "same, no-change rebuild" ;;
        "changed copy") echo "same, one file changed" ;;
    esac
}
echo
echo "median wall seconds of $RUNS runs (min-max); $("$KILN" --version 2>/dev/null | head -1), $("$DOCKER" version --format 'docker {{.Server.Version}}' 2>/dev/null)$([ "$BUILDAH" = 1 ] && echo ", $(buildah --version | cut -d' ' -f1-3)")"
echo
header="| workload | kiln | BuildKit | kiln/BuildKit |"
sep="|---|---|---|---|"
if [ "$BUILDAH" = 1 ]; then header+=" buildah | kiln/buildah |"; sep+="---|---|"; fi
header+=" kiln peak RSS |"; sep+="---|"
echo "$header"
echo "$sep"
f2() { printf '%.2f' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086
    set -- $row
    k=${RESULT[kiln/$1/$2]} d=${RESULT[docker/$1/$2]}
    line="| $(label "$row") | $(f2 "$k") (${RANGE[kiln/$1/$2]}) | $(f2 "$d") (${RANGE[docker/$1/$2]}) | $(ratio "$k" "$d") |"
    if [ "$BUILDAH" = 1 ]; then
        b=${RESULT[buildah/$1/$2]}
        line+=" $(f2 "$b") (${RANGE[buildah/$1/$2]}) | $(ratio "$k" "$b") |"
    fi
    line+=" $((${PEAK[$1/$2]:-0} / 1024)) MiB |"
    echo "$line"
done

#!/usr/bin/env bash
# The build cache shared across machines, kiln (release build) beside docker 26.1's BuildKit 0.13: what
# exporting the cache to a registry adds to a cold build, and how long a fully cached build takes on a
# fresh machine that imports it, with the bytes it downloads from the registry. Median of RUNS runs (3).
#
#   eval "$(PEERS_CUR=/tmp/peers-cur bash /work/shared/peers/setup-current.sh --env)"
#   bash bench/cache-share.sh
#
# Needs the current peers (setup-current.sh: dockerd 26 with localbase:latest, buildx) and Debian's
# docker-registry, which this script starts on 127.0.0.1:$PORT (default 5000) with an access log of its
# own. Run as root. Nothing leaves this machine.
# Environment: KILN (default target/release/kiln beside this script), DOCKER (default /usr/local/bin/docker),
# RUNS (default 3), PORT (default 5000), KEEP=1 to keep the work directory.
#
# The rows:
# - cold: nothing cached. kiln: a fresh --root holding only the base image (loaded from docker's
#   `docker save` of localbase, untimed). BuildKit: `docker builder prune -af` and `docker rmi` first.
# - cold + --cache-to type=registry,mode=max: the same, exporting every step's cache to the registry.
# - fresh machine, --cache-from: a new kiln --root (base loaded, untimed) / a pruned BuildKit, importing
#   the cache the previous row wrote; every step is cached. "downloaded" is the sum of the bytes the
#   registry sent for blob GETs during that build (manifests are a few hundred bytes and are left out).
# The workload is four stages: two that sleep 2 s, one that copies a source directory, and a final stage
# that copies from all three and runs a command.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KILN=${KILN:-$HERE/../target/release/kiln}
DOCKER=${DOCKER:-/usr/local/bin/docker}
RUNS=${RUNS:-3}
PORT=${PORT:-5000}
KEEP=${KEEP:-0}
REG=127.0.0.1:$PORT

die() { echo "cache-share: $*" >&2; exit 2; }
[ -x "$KILN" ] || die "no kiln binary at $KILN (cargo build --release -p kiln, or set KILN)"
[ -x "$DOCKER" ] || die "no docker CLI at $DOCKER (run the peers' setup-current.sh, then eval its --env)"
[ -n "${DOCKER_HOST:-}" ] || die "DOCKER_HOST is not set: eval \"\$(bash setup-current.sh --env)\" first"
"$DOCKER" image inspect localbase:latest >/dev/null 2>&1 || die "docker has no localbase:latest (run setup-current.sh)"
command -v docker-registry >/dev/null || die "needs docker-registry (apt-get install docker-registry)"

W=$(mktemp -d /tmp/kiln-cache-bench.XXXXXX)
ACCESS=$W/registry.log
cleanup() {
    set +e
    [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null && wait "$REGISTRY_PID" 2>/dev/null
    "$DOCKER" rmi -f cache-bench:latest >/dev/null 2>&1
    if [ "$KEEP" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------- registry
cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/registry-data
  delete:
    enabled: true
http:
  addr: $REG
EOF
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then die "something already listens on $REG (set PORT)"; fi
docker-registry serve "$W/registry.yml" >"$ACCESS" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 50); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$REG/v2/" >/dev/null || die "the registry did not start; log: $(tail -3 "$ACCESS")"

# ---------------------------------------------------------------------------------------------- workload
mkdir -p "$W/project/src"
cat >"$W/project/Dockerfile" <<'EOF'
FROM localbase:latest AS a
RUN sleep 2 && echo a > /a
FROM localbase:latest AS b
RUN sleep 2 && echo b > /b
FROM localbase:latest AS c
COPY src /src
RUN cat /src/* > /c
FROM localbase:latest
COPY --from=a /a /a
COPY --from=b /b /b
COPY --from=c /c /c
RUN cat /a /b /c > /abc
EOF
for i in $(seq 100); do echo "source file $i" >"$W/project/src/f$i.txt"; done
"$DOCKER" save localbase:latest -o "$W/localbase.tar"

# ------------------------------------------------------------------------------------------------ engines
KROOT=$W/kiln-root
fresh() {
    case $1 in
        kiln)
            rm -rf "$KROOT"
            "$KILN" --root "$KROOT" load -i "$W/localbase.tar" >/dev/null ;;
        docker)
            "$DOCKER" rmi -f cache-bench:latest >/dev/null 2>&1 || true
            "$DOCKER" builder prune -af >/dev/null ;;
    esac
}
# build ENGINE CACHE_FLAGS...: one timed build; its wall seconds are appended to $W/times.
build() {
    local engine=$1 start end
    shift
    local cmd
    case $engine in
        kiln) cmd=("$KILN" --root "$KROOT" build --progress=plain -t cache-bench "$@" "$W/project") ;;
        docker) cmd=("$DOCKER" buildx build --progress=plain -t cache-bench "$@" "$W/project") ;;
    esac
    start=$(date +%s.%N)
    if ! "${cmd[@]}" >>"$W/$engine.log" 2>&1; then
        echo "cache-share: $engine build failed:" >&2
        tail -20 "$W/$engine.log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    echo "$end - $start" | bc >>"$W/times"
}
# Bytes of blob bodies the registry sent since line $1 of its access log (common log format: status, size).
downloaded_since() {
    tail -n +"$(($1 + 1))" "$ACCESS" | awk '/"GET \/v2\/[^ ]*\/blobs\// { if ($9 ~ /^20[06]$/) n += $10 } END { print n + 0 }'
}
median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
range() { sort -n "$1" | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

declare -A T R BYTES
for engine in kiln docker; do
    ref=$REG/cache-bench/$engine:cache
    echo "measuring $engine ($RUNS runs each)..." >&2
    : >"$W/times"
    for _ in $(seq "$RUNS"); do fresh "$engine"; build "$engine"; done
    T[$engine/cold]=$(median "$W/times")
    R[$engine/cold]=$(range "$W/times")
    : >"$W/times"
    for _ in $(seq "$RUNS"); do
        fresh "$engine"
        build "$engine" --cache-to "type=registry,ref=$ref,mode=max"
    done
    T[$engine/export]=$(median "$W/times")
    R[$engine/export]=$(range "$W/times")
    : >"$W/times"
    : >"$W/bytes"
    for _ in $(seq "$RUNS"); do
        fresh "$engine"
        mark=$(wc -l <"$ACCESS")
        build "$engine" --cache-from "type=registry,ref=$ref"
        downloaded_since "$mark" >>"$W/bytes"
    done
    T[$engine/import]=$(median "$W/times")
    R[$engine/import]=$(range "$W/times")
    BYTES[$engine]=$(median "$W/bytes")
    if ! grep -q CACHED "$W/$engine.log"; then die "$engine: the import build cached nothing; see $W/$engine.log"; fi
done

ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
overhead() { echo "scale=1; ($2 - $1) * 100 / $1" | bc | sed 's/^\./0./; s/^-\./-0./'; }
echo
echo "median wall seconds of $RUNS runs; $("$KILN" --version | head -1), $("$DOCKER" version --format 'docker {{.Server.Version}}')"
printf '| %-48s | %-18s | %-18s | %13s |\n' "" "kiln (min-max)" "BuildKit (min-max)" kiln/BuildKit
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..50})" "--------------------" "--------------------" "---------------"
row() {
    printf '| %-48s | %5.2f %-12s | %5.2f %-12s | %13s |\n' "$1" "${T[kiln/$2]}" "(${R[kiln/$2]})" \
        "${T[docker/$2]}" "(${R[docker/$2]})" "$(ratio "${T[kiln/$2]}" "${T[docker/$2]}")"
}
row "cold build" cold
row "cold + --cache-to type=registry,mode=max" export
row "fresh machine, --cache-from, all cached" import
echo
echo "export overhead on the cold build: kiln $(overhead "${T[kiln/cold]}" "${T[kiln/export]}")%, BuildKit $(overhead "${T[docker/cold]}" "${T[docker/export]}")%"
echo "blob bytes downloaded by the fully cached build: kiln ${BYTES[kiln]}, BuildKit ${BYTES[docker]}"

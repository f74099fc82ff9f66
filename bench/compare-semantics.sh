#!/usr/bin/env bash
# Builds each case under bench/semantics/cases with docker's BuildKit and with kiln, and prints per case what
# differs between the two images: config fields, history (created_by, empty_layer), number of layers, the
# merged file tree (names, type, mode, uid:gid, size, link target, content hash; no times) and, to locate a
# difference, each step's layer entries. The facts come from bench/semantics/image_facts.py, which reads
# `docker save` and `kiln save --format oci` archives directly (layers applied with their whiteouts, as
# `umoci unpack` would, without needing umoci's rootfs on disk).
#
#   PEERS=/tmp/peers bash bench/compare-semantics.sh [CASE...]      # CASE: a directory name under cases/
#
# Needs the peers (PEERS=/tmp/peers bash /work/shared/peers/setup.sh): docker 20.10 with BuildKit, and the
# busybox OCI layout $PEERS/base-oci, which is loaded into a fresh kiln store as localbase:latest (docker has
# the same image as localbase:latest). Run as root. Environment:
#   KILN    the kiln binary (default: target/release/kiln beside this script)
#   DOCKER  the docker 20.10 CLI (default: /usr/bin/docker)
#   KEEP=1  keep the work directory (archives, logs, contexts) and print its path
# A case is a build context: Dockerfile and files, plus optionally `build-args` (one K=V per line) and
# `prepare.sh` (run in the copied context, e.g. to make archives or symlinks); those two are not part of the
# context. Differences semantics/known-differences.txt explains (20.10's BuildKit is older than the BuildKit
# kiln follows) are listed apart and do not make a case different. Exit status: 0 if no case differs, 1 otherwise.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CASES_DIR=$HERE/semantics/cases
KILN=${KILN:-$HERE/../target/release/kiln}
DOCKER=${DOCKER:-/usr/bin/docker}
PEERS=${PEERS:-/tmp/peers}
KEEP=${KEEP:-0}
TAG_PREFIX=kiln-semantics

die() { echo "compare-semantics: $*" >&2; exit 2; }
[ -x "$KILN" ] || die "no kiln binary at $KILN (cargo build --release -p kiln, or set KILN)"
[ -x "$DOCKER" ] || die "no docker CLI at $DOCKER (run the peers' setup.sh)"
[ -f "$PEERS/base-oci/index.json" ] || die "no base layout at $PEERS/base-oci (run the peers' setup.sh)"
"$DOCKER" image inspect localbase:latest >/dev/null 2>&1 || die "docker has no localbase:latest (run the peers' setup.sh)"

W=$(mktemp -d /tmp/kiln-semantics.XXXXXX)
ROOT=$W/root
built_tags=()
cleanup() {
    for t in "${built_tags[@]}"; do "$DOCKER" rmi -f "$t" >/dev/null 2>&1; done
    if [ "$KEEP" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -p "$W/ctx" "$W/out" "$W/log"

kiln() { "$KILN" --root "$ROOT" "$@"; }
id=$(kiln load -i "$PEERS/base-oci" | sed -n 's/^Loaded image ID: //p' | head -1)
[ -n "$id" ] || die "kiln load -i $PEERS/base-oci printed no image ID"
kiln tag "$id" localbase:latest >/dev/null || die "kiln tag failed"

if [ $# -gt 0 ]; then cases=("$@"); else mapfile -t cases < <(ls "$CASES_DIR"); fi

same=0; known=0; differ=0; failed=0
for c in "${cases[@]}"; do
    src=$CASES_DIR/$c
    [ -f "$src/Dockerfile" ] || { echo "== $c: no such case"; failed=$((failed + 1)); continue; }
    ctx=$W/ctx/$c
    cp -a "$src" "$ctx"
    rm -f "$ctx/build-args" "$ctx/prepare.sh"
    if [ -f "$src/prepare.sh" ]; then (cd "$ctx" && bash "$src/prepare.sh") || { echo "== $c: prepare.sh failed"; failed=$((failed + 1)); continue; }; fi
    args=()
    if [ -f "$src/build-args" ]; then
        while IFS= read -r kv; do [ -n "$kv" ] && args+=(--build-arg "$kv"); done < "$src/build-args"
    fi

    bk_ok=1; kiln_ok=1
    tag=$TAG_PREFIX-$c:latest
    built_tags+=("$tag")
    if DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain -t "$tag" "${args[@]}" "$ctx" >"$W/log/$c.buildkit.log" 2>&1 &&
        "$DOCKER" save -o "$W/out/$c.docker.tar" "$tag" >>"$W/log/$c.buildkit.log" 2>&1; then :; else bk_ok=0; fi
    if kiln build --progress=plain -t "$TAG_PREFIX-$c" "${args[@]}" "$ctx" >"$W/log/$c.kiln.log" 2>&1 &&
        kiln save --format oci -o "$W/out/$c.oci.tar" "$TAG_PREFIX-$c" >>"$W/log/$c.kiln.log" 2>&1; then :; else kiln_ok=0; fi

    if [ $bk_ok = 0 ] || [ $kiln_ok = 0 ]; then
        echo "== $c: BUILD RESULTS DIFFER (buildkit: $([ $bk_ok = 1 ] && echo ok || echo failed), kiln: $([ $kiln_ok = 1 ] && echo ok || echo failed))"
        [ $bk_ok = 0 ] && { echo "   buildkit log tail:"; tail -5 "$W/log/$c.buildkit.log" | sed 's/^/     /'; }
        [ $kiln_ok = 0 ] && { echo "   kiln log tail:"; tail -5 "$W/log/$c.kiln.log" | sed 's/^/     /'; }
        failed=$((failed + 1))
        continue
    fi
    report=$(python3 "$HERE/semantics/image_facts.py" compare "$W/out/$c.docker.tar" "$W/out/$c.oci.tar" \
        --case "$c" --known "$HERE/semantics/known-differences.txt")
    case $? in
        0) echo "== $c: same"; same=$((same + 1)) ;;
        3) echo "== $c: same but for known version differences"; echo "$report" | sed 's/^/   /'; known=$((known + 1)) ;;
        1) echo "== $c: DIFFERENT"; echo "$report" | sed 's/^/   /'; differ=$((differ + 1)) ;;
        *) echo "== $c: comparison failed"; echo "$report" | sed 's/^/   /'; failed=$((failed + 1)) ;;
    esac
done
echo
echo "summary: ${#cases[@]} cases: $same same, $known same but for known version differences, $differ different, $failed failed (a build on one side, or the comparison)"
[ $differ = 0 ] && [ $failed = 0 ]

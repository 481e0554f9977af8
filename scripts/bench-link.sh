#!/usr/bin/env bash
# Figure P1: how much longer linking an executable takes through ipbp-ld (forward + symbol map +
# input snapshot) than the same link with the plain linker. Target: ratio <= 1.10.
#
# Method (isolates the link from compilation):
#   1. Build ipbp-ld (release).
#   2. Build the app (default testdata/web, debug) with `-C save-temps`, so rustc keeps the
#      *.rcgu.o and symbols.o it links, with a small logging linker named `*-ld` (so rustc speaks
#      to it exactly as to ipbp-ld). It records rustc's argv, cwd and environment, then links
#      through ipbp-ld with IPBP_DISABLE=1, whose real linker (IPBP_LINKER) is a second logger that
#      records the `cc` command ipbp-ld forwards: that is the plain link.
#   3. Replay the link N times, interleaved in rotating order:
#        plain     cc <the cc-style args>                              (the baseline)
#        ipbp-ld   ipbp-ld <the ld-style args, as rustc gave them>     (forward + map + snapshot)
#        disabled  IPBP_DISABLE=1 ipbp-ld <the same>                   (pure forwarding cost)
#      each to its own scratch output in the build's deps directory (so ipbp-ld keeps its records
#      under <target>/ipbp exactly as in a real build). Warm-up rounds are discarded: the first
#      ipbp-ld run fills the fingerprint cache and the input store, as the previous build has
#      done in a real rebuild.
#   Two modes: `same` replays identical inputs (like an incremental rebuild, where rustc hardlinks
#   unchanged codegen units from its cache, so ipbp-ld's fingerprint cache hits); `fresh` gives
#   every *.o input a new inode before each run (like a non-incremental rebuild: ipbp-ld must hash
#   and keep all of them again).
#
# Prints a table; writes scripts/out/bench-link.json and scripts/out/bench-link-runs.tsv.
# Needs bash, coreutils, python3, cargo/rustc and cc. Exits 0 whatever the ratio (non-zero only
# when the benchmark itself cannot run).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-link.sh [options]
  -n, --runs N       measured rounds (default 15; env BENCH_RUNS)
  -w, --warmup N     discarded warm-up rounds (default 2, at least 1; env BENCH_WARMUP)
  -m, --mode M       same | fresh | both (default both; env BENCH_MODE)
      --app DIR      cargo project to link (default testdata/web; env BENCH_APP)
      --bin NAME     its binary (default web; env BENCH_BIN)
      --no-build     reuse the last capture (skip building ipbp-ld and the app)
  -h, --help
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-15}
WARMUP=${BENCH_WARMUP:-2}
MODE=${BENCH_MODE:-both}
APP=${BENCH_APP:-$ROOT/testdata/web}
BIN=${BENCH_BIN:-web}
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        -n | --runs) RUNS=$2; shift 2 ;;
        -w | --warmup) WARMUP=$2; shift 2 ;;
        -m | --mode) MODE=$2; shift 2 ;;
        --app) APP=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-link: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$MODE" in same | fresh | both) ;; *) echo "bench-link: --mode must be same, fresh or both" >&2; exit 2 ;; esac
APP=$(cd "$APP" && pwd)

OUT=$ROOT/scripts/out
WORK=$OUT/bench-link            # everything the benchmark builds or writes, besides the results
TARGET=$WORK/target             # the app's cargo target directory
CAPTURE=$WORK/capture
SHIM_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SHIM=$SHIM_TARGET/release/ipbp-ld
mkdir -p "$OUT" "$WORK/bin"

step() { printf '\n==> %s\n' "$*" >&2; }

# The plain link is `cc`, which is what ipbp-ld forwards to by default.
unset IPBP_LINKER IPBP_DISABLE

if [ "$BUILD" = 1 ]; then
    step "building ipbp-ld (release)"
    (cd "$ROOT" && cargo build --release -p ipbp-ld)

    # The loggers. The first must be named *-ld: rustc picks the argument style from the name.
    cat >"$WORK/bin/capture-ld" <<'EOF'
#!/usr/bin/env bash
# Records rustc's link command for the benchmarked binary, then links through ipbp-ld in pure
# forwarding mode with capture-cc as its real linker.
out= prev=
for a in "$@"; do
    [ "$prev" = -o ] && out=$a
    prev=$a
done
case "${out##*/}" in
    "$BENCH_CAPTURE_BIN"-*)
        printf '%s\0' "$@" >"$BENCH_CAPTURE_DIR/ld.args"
        printf '%s' "$PWD" >"$BENCH_CAPTURE_DIR/cwd"
        env -0 >"$BENCH_CAPTURE_DIR/env"
        export BENCH_CAPTURE_CC=1
        ;;
esac
export IPBP_DISABLE=1 IPBP_LINKER="${0%/*}/capture-cc"
exec "$BENCH_SHIM" "$@"
EOF
    cat >"$WORK/bin/capture-cc" <<'EOF'
#!/usr/bin/env bash
# Records the cc command ipbp-ld forwards for the benchmarked binary, then runs it.
if [ -n "${BENCH_CAPTURE_CC:-}" ]; then
    printf '%s\0' "$@" >"$BENCH_CAPTURE_DIR/cc.args"
fi
exec cc "$@"
EOF
    chmod +x "$WORK/bin/capture-ld" "$WORK/bin/capture-cc"

    step "building $BIN (debug, -C save-temps) in $TARGET and capturing its link"
    rm -rf "$CAPTURE"
    mkdir -p "$CAPTURE"
    crate=${BIN//-/_}
    # Force a fresh compile and link of the binary only; drop the previous run's kept temporaries.
    (cd "$APP" && CARGO_TARGET_DIR=$TARGET cargo clean -q -p "$BIN" 2>/dev/null) || true
    rm -rf "$TARGET"/debug/deps/rustc* "$TARGET"/debug/deps/"$crate"-*.rcgu.* \
        "$TARGET"/debug/deps/ipbp-bench-* "$TARGET/ipbp"
    (
        cd "$APP"
        export CARGO_TARGET_DIR=$TARGET
        export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=$WORK/bin/capture-ld
        export BENCH_CAPTURE_DIR=$CAPTURE BENCH_CAPTURE_BIN=$crate BENCH_SHIM=$SHIM
        locked=
        [ -f Cargo.lock ] && locked=--locked
        time cargo rustc $locked --bin "$BIN" -- -C save-temps
    )
    for f in ld.args cc.args cwd env; do
        if [ ! -s "$CAPTURE/$f" ]; then
            echo "bench-link: the link of $BIN was not captured ($CAPTURE/$f missing)" >&2
            exit 1
        fi
    done
else
    [ -x "$SHIM" ] && [ -s "$CAPTURE/ld.args" ] || { echo "bench-link: nothing to reuse; run without --no-build" >&2; exit 1; }
fi

step "replaying the link: $WARMUP warm-up + $RUNS measured rounds per mode ($MODE)"
python3 "$ROOT/scripts/bench_link.py" \
    --capture "$CAPTURE" --shim "$SHIM" --home "$WORK/ipbp-home" \
    --runs "$RUNS" --warmup "$WARMUP" --mode "$MODE" --bin "$BIN" \
    --json "$OUT/bench-link.json" --tsv "$OUT/bench-link-runs.tsv"

#!/usr/bin/env bash
# The live demo: build an app through ipbp-ld, run it, edit it while it runs, watch it change.
#
#   scripts/demo.sh            the whole show (about a minute the first time: it builds ipbp-ld
#                              and the app's dependencies)
#   scripts/demo.sh --keep     leave the demo's copy of the app and its process for you to play
#                              with (the script prints where it is and how to stop it)
#
# It copies testdata/restart to a scratch directory, gives it the two-line .cargo/config.toml a
# user would write, builds and starts it, then edits its source twice and runs `cargo build`
# after each edit. The app has no hot point at all (only `ipbp::init()`):
#   1. an edit of a `dyn Trait` method whose box was built at startup is patched in place: the
#      running process shows the new code, its counter carries on;
#   2. a field added to a static's type cannot be patched (its live value has the old layout):
#      the process restarts into the new build — same pid, same parent — and keeps its counter
#      (an `ipbp::on_restart` hook hands it over).
# Exits non-zero if the process did not change as shown.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEEP=0
[ "${1:-}" = --keep ] && KEEP=1

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

say "Building ipbp-ld (release)"
(cd "$ROOT" && cargo build --release -q -p ipbp-ld)
SHIM=${CARGO_TARGET_DIR:-$ROOT/target}/release/ipbp-ld
[ -x "$SHIM" ] || die "ipbp-ld was not built at $SHIM"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipbp-demo.XXXXXX")
APP=$WORK/restart
export IPBP_HOME=$WORK/registry # a registry of its own, so the demo never touches yours
cp -r "$ROOT/testdata/restart" "$APP"
rm -rf "$APP/target"
sed -i "s|path = \"../../patch-runtime\"|path = \"$ROOT/patch-runtime\"|" "$APP/Cargo.toml"
mkdir -p "$APP/.cargo"
cat >"$APP/.cargo/config.toml" <<EOF
[target.x86_64-unknown-linux-gnu]
linker = "$SHIM"
EOF

cleanup() {
    if [ -n "${PID:-}" ] && [ "$KEEP" = 0 ]; then kill "$PID" 2>/dev/null || true; fi
    if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

say "The app: $APP (no #[ipbp::hot]: main loops, calling a dyn Speaker built at startup)"
echo "Its .cargo/config.toml:"
sed 's/^/    /' "$APP/.cargo/config.toml"

say "cargo build (first build: compiles the dependencies)"
(cd "$APP" && cargo build -q)

say "Starting it"
LOG=$WORK/app.log
(cd "$APP" && RESTART_PERIOD_MS=300 exec ./target/debug/restart >"$LOG" 2>&1) &
PID=$!
for _ in $(seq 100); do [ -e "$IPBP_HOME/$PID.process" ] && break; sleep 0.05; done
[ -e "$IPBP_HOME/$PID.process" ] || die "the app did not register (see $LOG)"
sleep 1
tail -n 3 "$LOG" | sed 's/^/    /'

# Waits until the app prints a line containing $1; shows the last lines.
expect() {
    for _ in $(seq 100); do
        if tail -n 3 "$LOG" | grep -q -- "$1"; then
            tail -n 3 "$LOG" | sed 's/^/    /'
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$LOG" >&2
    die "the running app never printed \"$1\""
}

edit() {
    local file=$1 from=$2 to=$3
    grep -qF -- "$from" "$APP/$file" || die "$file does not contain: $from"
    python3 - "$APP/$file" "$from" "$to" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(old, new, 1))
EOF
    echo "    $file:  $from  ->  $to"
}

say "Edit 1: the body of <Plain as Speaker>::word, called through a Box<dyn Speaker> made at startup"
edit src/main.rs '"hello".to_string()' '"hot-patched!".to_string()'
say "cargo build (the running process is patched while cargo links the new build)"
(cd "$APP" && cargo build 2>&1 | grep -E 'Patched|Restarted|Skipped|Note|Unchanged|error' || true)
expect "word=hot-patched!"
BEFORE=$(tail -n 1 "$LOG" | sed -n 's/.*count=\([0-9]*\).*/\1/p')

say "Edit 2: a field added to the type of a static (its live value cannot take it): a restart"
edit src/main.rs '    ticks: u64,
}' '    ticks: u64,
    extra: u64,
}'
edit src/main.rs 'Stats { ticks: 0 }' 'Stats { ticks: 0, extra: 0 }'
edit src/main.rs 'fn version() -> &'"'"'static str {
    "one"' 'fn version() -> &'"'"'static str {
    "two"'
(cd "$APP" && cargo build 2>&1 | grep -E 'Patched|Restarted|Skipped|Note|Unchanged|error' || true)
expect "version=two restarts=1"
AFTER=$(grep '^started' "$LOG" | tail -n 1 | sed -n 's/.*count=\([0-9]*\).*/\1/p')
[ -n "$BEFORE" ] && [ -n "$AFTER" ] && [ "$AFTER" -ge "$BEFORE" ] || die "the counter was not kept ($BEFORE before, $AFTER after)"
kill -0 "$PID" || die "the app is gone"
[ "$(grep -c "^started pid=$PID " "$LOG")" = 2 ] || die "the app did not restart in place (pid $PID)"

say "Same process, same pid ($PID): the counter went on from $BEFORE through the restart"
if [ "$KEEP" = 1 ]; then
    say "Kept: edit $APP/src/main.rs and run 'cargo build' there; the app (pid $PID) logs to $LOG"
    echo "    stop it with: kill $PID   (and remove $WORK when done)"
    echo "    (run 'export IPBP_HOME=$IPBP_HOME' in your shell first, so your builds find it)"
fi
say "Done"

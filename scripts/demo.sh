#!/usr/bin/env bash
# The live demo: build an app through ipbp-ld, run it, edit it while it runs, watch it change.
#
#   scripts/demo.sh            the whole show (about a minute the first time: it builds ipbp-ld
#                              and the app's dependencies)
#   scripts/demo.sh --keep     leave the demo's copy of the app and its process for you to play
#                              with (the script prints where it is and how to stop it)
#
# It copies testdata/counter to a scratch directory, gives it the two-line .cargo/config.toml a
# user would write, builds and starts it, then edits its source twice and runs `cargo build`
# after each edit. Nothing is restarted: the running process shows the new code, and its
# counters (a static and a thread-local) carry on. Exits non-zero if the process did not change.
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
APP=$WORK/counter
export IPBP_HOME=$WORK/registry # a registry of its own, so the demo never touches yours
cp -r "$ROOT/testdata/counter" "$APP"
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

say "The app: $APP (three threads calling #[ipbp::hot] functions in a loop)"
echo "Its .cargo/config.toml:"
sed 's/^/    /' "$APP/.cargo/config.toml"

say "cargo build (first build: compiles the dependencies)"
(cd "$APP" && cargo build -q)

say "Starting it"
LOG=$WORK/app.log
(cd "$APP" && COUNTER_PERIOD_MS=300 exec ./target/debug/counter >"$LOG" 2>&1) &
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

say "Edit 1: the message of the hot function tick()"
edit src/main.rs 'let msg = "hello";' 'let msg = "hot-patched!";'
say "cargo build (the running process is patched while cargo links the new build)"
(cd "$APP" && cargo build 2>&1 | grep -E 'Patched|Skipped|Note|Unchanged|error' || true)
expect "msg=hot-patched!"

say "Edit 2: a private helper three calls below the hot point, and the library crate"
edit src/main.rs 'String::from("deep")' 'String::from("deeper-than-before")'
edit words/src/lib.rs 'format!("{w}!")' 'format!("{w}, from the patched library")'
(cd "$APP" && cargo build 2>&1 | grep -E 'Patched|Skipped|Note|Unchanged|error' || true)
expect "deep=deeper-than-before"

say "Same process, same pid ($PID): global= and local= (a static and a thread-local) kept counting"
grep -c '^started' "$LOG" | xargs printf '    the app started %s time(s)\n'
if [ "$KEEP" = 1 ]; then
    say "Kept: edit $APP/src/main.rs and run 'cargo build' there; the app (pid $PID) logs to $LOG"
    echo "    stop it with: kill $PID   (and remove $WORK when done)"
    echo "    (run 'export IPBP_HOME=$IPBP_HOME' in your shell first, so your builds find it)"
fi
say "Done"

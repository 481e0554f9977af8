#!/usr/bin/env python3
"""Debugger figures for BENCHMARKS.md (*Debuggers*): gdb's attach-to-prompt time on a program with
0, 1 and 50 patches, and the patch latency (P3) with gdb attached and running the program.

Workload: a copy of testdata/debuggee (two threads calling `work(n)` every 20 ms) built through
the release ipbp-ld; each patch edits `work`'s constant. Attach-to-prompt is the wall time of
`gdb -nx -batch -p PID /proc/PID/exe -ex 'info sharedlibrary' -ex detach` (attach, read every
object's symbols, the command, detach), median of --rounds. P3 is ipbp-ld's "N ms after rustc
called ipbp-ld" of the status line (rustc calling the linker to the patch live), median of
--rounds builds, without and with gdb attached (`gdb -p PID -batch -ex continue`, a debugger
sitting in `continue`). Standard library only; prints a Markdown table.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "scripts", "out", "bench", "debuggers")
SHIM = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ipbp-ld")
HOME = os.path.join(OUT, "home")
APP = os.path.join(OUT, "debuggee")
MAIN = os.path.join(APP, "src", "main.rs")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO_", "IPBP_"))}
    e["CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"] = SHIM
    e["IPBP_HOME"] = HOME
    e["CARGO_TARGET_DIR"] = os.path.join(APP, "target")
    return e


def build():
    """`cargo build`; returns the status line's "N ms after rustc called ipbp-ld", if any."""
    r = subprocess.run(["cargo", "build"], cwd=APP, env=env(), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build failed:\n{r.stderr}")
    m = re.search(r"Patched \S+ \(pid \d+\): .*?(\d+(?:\.\d+)?) ms after rustc", r.stderr)
    return (float(m.group(1)) if m else None), r.stderr


ADD = [1]


def patch():
    """Edits `work`'s constant and builds; the patch must apply."""
    text = open(MAIN).read()
    new = ADD[0] + 1
    open(MAIN, "w").write(text.replace(f"doubled + {ADD[0]};", f"doubled + {new};", 1))
    ADD[0] = new
    ms, stderr = build()
    if ms is None:
        sys.exit(f"not patched:\n{stderr}")
    return ms


def attach_ms(pid):
    """One gdb attach-to-prompt-and-detach: (wall ms, gdb's CPU ms)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    r = subprocess.run(
        ["timeout", "-s", "KILL", "120", "gdb", "-nx", "-q", "-batch", "-p", str(pid), f"/proc/{pid}/exe",
         "-ex", "info sharedlibrary", "-ex", "detach"],
        capture_output=True, text=True)
    wall = (time.monotonic() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    if r.returncode != 0:
        sys.exit(f"gdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return wall, cpu


def copy_app(dest):
    shutil.copytree(os.path.join(ROOT, "testdata", "debuggee"), dest)
    toml = os.path.join(dest, "Cargo.toml")
    runtime = os.path.join(ROOT, "patch-runtime")
    text = open(toml).read().replace('"../../patch-runtime"', f'"{runtime}"')
    open(toml, "w").write(text)


def start(program):
    proc = subprocess.Popen([program], env={**env(), "IPBP_HOME": HOME}, stdout=subprocess.DEVNULL)
    while not os.path.exists(os.path.join(HOME, f"{proc.pid}.process")):
        time.sleep(0.02)
    return proc


def side_by_side(patched, plain, rounds):
    """Attach times of the patched and the unpatched program, alternating (same machine load)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(attach_ms(patched.pid))
        b.append(attach_ms(plain.pid))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return (med(a, 0), med(a, 1)), (med(b, 0), med(b, 1))


def with_gdb(pid, action):
    """Runs `action` while gdb is attached to `pid` and sits in `continue`; then detaches."""
    gdb = subprocess.Popen(
        ["gdb", "-nx", "-q", "-batch", "-p", str(pid), f"/proc/{pid}/exe",
         "-ex", "handle SIGUSR1 stop print nopass", "-ex", "continue"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while "TracerPid:\t0" in open(f"/proc/{pid}/status").read():
            if time.monotonic() > deadline:
                sys.exit("gdb never attached")
            time.sleep(0.05)
        time.sleep(1)  # symbols read, the program continuing
        return action()
    finally:
        # Stops the program (gdb keeps the signal); batch mode then detaches. Interrupting gdb
        # with SIGINT instead sometimes ended the program with that SIGINT after the detach.
        os.kill(pid, signal.SIGUSR1)
        try:
            gdb.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gdb.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--patches", type=int, default=50)
    args = ap.parse_args()
    if not os.path.exists(SHIM):
        sys.exit(f"{SHIM} is missing: cargo build --release -p ipbp-ld")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(HOME, mode=0o700)
    # Two copies of the app: APP is patched, PLAIN never rebuilt (the unpatched reference,
    # measured alternately with it).
    global APP, MAIN
    plain_dir = os.path.join(OUT, "plain")
    for d in (APP, plain_dir):
        copy_app(d)
    APP_, MAIN_ = APP, MAIN
    APP, MAIN = plain_dir, os.path.join(plain_dir, "src", "main.rs")
    build()
    plain = start(os.path.join(plain_dir, "target", "debug", "debuggee"))
    APP, MAIN = APP_, MAIN_
    build()
    app = start(os.path.join(APP, "target", "debug", "debuggee"))
    rows = []
    try:
        a, b = side_by_side(app, plain, args.rounds)
        rows.append(("0 patches", a, b))
        patch()
        a, b = side_by_side(app, plain, args.rounds)
        rows.append(("1 patch", a, b))
        while ADD[0] - 1 < args.patches:
            patch()
        a, b = side_by_side(app, plain, args.rounds)
        rows.append((f"{args.patches} patches", a, b))
        untraced, traced = [], []
        for _ in range(args.rounds):
            untraced.append(patch())
            traced.append(with_gdb(app.pid, patch))
    finally:
        for p in (app, plain):
            p.kill()
            p.wait()
    print("| gdb attach to prompt (median) | patched: wall / gdb CPU | unpatched, alternating: wall / gdb CPU | ratio wall / CPU |")
    print("| --- | ---: | ---: | ---: |")
    for label, a, b in rows:
        print(f"| {label} | {a[0]:.0f} / {a[1]:.0f} ms | {b[0]:.0f} / {b[1]:.0f} ms | {a[0] / b[0]:.2f}x / {a[1] / b[1]:.2f}x |")
    u, t = statistics.median(untraced), statistics.median(traced)
    print()
    print("| P3 (rustc calls ipbp-ld to patch live), alternating | median | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| no debugger | {u:.0f} ms | 1.00x |")
    print(f"| gdb attached, program running (installs park with SIGPROF) | {t:.0f} ms | {t / u:.2f}x |")


if __name__ == "__main__":
    main()

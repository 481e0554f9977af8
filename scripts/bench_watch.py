#!/usr/bin/env python3
"""Figure P10 (issue 18): save → new output under `ipbp-ld watch`, side by side with `cargo build`
typed right after the save and with cargo-watch running `cargo build`, on counter and web. Standard
library only.

    scripts/bench_watch.py               5 rounds each; rewrites its section of BENCHMARKS.md
    scripts/bench_watch.py --rounds 3 --no-write

Each round, back to back on the same copy of the app (scripts/out/bench/watch-<app>, linked through
the release ipbp-ld by its .cargo/config.toml):
  watch   `ipbp-ld watch` starts the program; the edit is written (as an editor saves in place) and
          the clock stops at the program's first output from the new code (counter: a tick line
          with the new message; web: an HTTP answer with the new greeting, polled every 2 ms);
  cargo   the program is started on its own; the edit is written and `cargo build` runs at once;
          the clock stops the same way.
  cargo-watch  the program is started on its own and `cargo watch -x build` (its defaults, so its
          own debounce, `--delay`) runs in the app's directory; once its first `cargo build` (nothing
          to do) has finished, the edit is written and the clock stops the same way.
The three run in the same rounds, their order rotating. Each ratio is the median of per-round ratios.
If cargo-watch is not installed, its column is skipped and the section says so.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_apps import (  # noqa: E402
    HOME, ROOT, SHIM, App, Process, app_env, http_get, log, median, run, settle, step,
)

EDITS = {
    "counter": ("src/main.rs", 'let msg = "hello";', 'let msg = "{v}";'),
    "web": ("src/handlers.rs", 'format!("Hello, {name}!")', 'format!("{v}, {name}!")'),
}


class Watch(Process):
    """`ipbp-ld watch` with its output (the program's and its own) collected line by line."""

    def __init__(self, cwd, env):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([SHIM, "watch"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()


class CargoWatch(Process):
    """`cargo watch -x build` with its defaults, in its own process group (it starts cargo, which
    starts rustc and ipbp-ld), its output collected line by line."""

    def __init__(self, cwd, env):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["cargo", "watch", "-x", "build"], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def cargo_watch_version():
    """cargo-watch's version line, or None when it is not installed."""
    if not shutil.which("cargo-watch") and not os.path.exists(
            os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), "bin", "cargo-watch")):
        return None
    try:
        p = subprocess.run(["cargo", "watch", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def cargo_watch_delay():
    """cargo-watch's default debounce, as its --help states it (None if it does not say)."""
    try:
        p = subprocess.run(["cargo", "watch", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"--delay .*?\[default: ([^\]]+)\]", p.stdout)
    if not m:
        return None
    d = m.group(1).strip()
    return f"{d} s" if re.fullmatch(r"[\d.]+", d) else d


def env_for(kind):
    env = app_env({"COUNTER_PERIOD_MS": "5", "PORT": "0"} if kind == "counter" else {"PORT": "0"})
    for k in list(env):
        if k.startswith("CARGO_TARGET_") or k == "RUSTC_WRAPPER":
            del env[k]
    return env


def ready(proc, kind):
    """Waits for the program to serve; returns the web port (None for counter)."""
    if kind == "counter":
        proc.wait_for(lambda l: l.startswith("tick "))
        return None
    _, line = proc.wait_for(lambda l: l.startswith("listening on"))
    return int(line.rsplit(":", 1)[1])


def registered(pid):
    for _ in range(400):
        if os.path.exists(os.path.join(HOME, f"{pid}.process")):
            return
        time.sleep(0.025)
    sys.exit(f"bench: pid {pid} never registered")


def new_output(proc, kind, port, variant, since):
    """When the program first showed `variant`."""
    if kind == "counter":
        t, _ = proc.wait_for(lambda l: f"msg={variant} " in l, since=since)
        return t
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http_get(port, "/hello").startswith(variant + ","):
                return time.time()
        except OSError:
            pass
        time.sleep(0.002)
    sys.exit(f"bench: web never answered with {variant!r}")


def round_watch(app, kind, variant, warm=False):
    w = Watch(app.dir, env_for(kind))
    try:
        _, line = w.wait_for(lambda l: l.strip().startswith("Running `"))
        pid = int(re.search(r"\(pid (\d+)\)", line).group(1))
        w.wait_for(lambda l: l.strip().startswith("Built "))
        port = ready(w, kind)
        registered(pid)
        time.sleep(0.3)
        mark = w.mark()
        t0 = time.time()
        app.edit(EDITS[kind], variant)
        t1 = new_output(w, kind, port, variant, mark)
        _, progress = w.wait_for(lambda l: l.strip().startswith(("Rebuilt ", "Failed ")), since=mark)
        _, patched = w.wait_for(lambda l: l.strip().startswith(("Patched ", "Skipped ", "Unchanged ")), since=mark)
    finally:
        w.stop()
    if warm:
        return None
    if "rustc directly" not in progress:
        sys.exit(f"bench: the save did not take the direct path: {progress.strip()}")
    rustc = sum(float(s) for s in re.findall(r" (\d+\.\d+)s", progress.split(":", 1)[1].split(";")[0]))
    after = re.search(r"(\d+) ms after rustc called ipbp-ld", patched)
    applied = re.search(r"applied in ([\d.]+) ms", patched)
    started = re.search(r"rustc started ([\d.]+) ms after the save", progress)
    return {"total_ms": (t1 - t0) * 1e3, "rustc_ms": rustc * 1e3,
            "ipbp_ms": float(after.group(1)) if after else None,
            "apply_ms": float(applied.group(1)) if applied else None,
            "watch_ms": float(started.group(1)) if started else None, "progress": progress.strip()}


def round_cargo(app, kind, variant):
    p = Process(app.program(), app.dir, env_for(kind))
    try:
        port = ready(p, kind)
        registered(p.pid)
        time.sleep(0.3)
        mark = p.mark()
        t0 = time.time()
        app.edit(EDITS[kind], variant)
        build = subprocess.Popen(["cargo", "build"], cwd=app.dir, env=env_for(kind), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        done = {}

        def finish():
            done["stderr"] = build.communicate()[1]
            done["t"] = time.time()
        waiter = threading.Thread(target=finish)
        waiter.start()
        # The new code runs while the build is still going (the patch is applied during the link).
        t1 = new_output(p, kind, port, variant, mark)
        waiter.join()
        if build.returncode != 0:
            sys.exit(f"bench: cargo build failed:\n{done['stderr']}")
    finally:
        p.stop()
    after = re.search(r"(\d+) ms after rustc called ipbp-ld", done["stderr"])
    started = rustc_started(app, kind)
    return {"total_ms": (t1 - t0) * 1e3, "cargo_ms": (done["t"] - t0) * 1e3,
            "ipbp_ms": float(after.group(1)) if after else None,
            "before_rustc_ms": (started - t0) * 1e3 if started and started > t0 else None}


def round_cargo_watch(app, kind, variant):
    p = Process(app.program(), app.dir, env_for(kind))
    cw = None
    try:
        port = ready(p, kind)
        registered(p.pid)
        cw = CargoWatch(app.dir, env_for(kind))
        # cargo-watch runs the command once at start: wait until that build (nothing to do) is over.
        cw.wait_for(lambda l: l.startswith("[Finished running"), timeout=120)
        time.sleep(0.3)
        mark = p.mark()
        cmark = cw.mark()
        t0 = time.time()
        app.edit(EDITS[kind], variant)
        t1 = new_output(p, kind, port, variant, mark)
        # The build goes on after the patch landed (rustc exits after the link): let it finish.
        t2, done = cw.wait_for(lambda l: l.startswith("[Finished running"), since=cmark, timeout=120)
        out = "\n".join(l for _, l in cw.lines[cmark:])
        if "Exit status: 0" not in done:
            sys.exit(f"bench: cargo build under cargo-watch failed:\n{out}")
        t_run, _ = cw.wait_for(lambda l: l.startswith("[Running"), since=cmark)
    finally:
        if cw:
            cw.stop()
        p.stop()
    after = re.search(r"(\d+) ms after rustc called ipbp-ld", out)
    return {"total_ms": (t1 - t0) * 1e3, "cargo_ms": (t2 - t0) * 1e3,
            "ipbp_ms": float(after.group(1)) if after else None,
            "run_ms": (t_run - t0) * 1e3}


def rustc_started(app, kind):
    """When cargo started the app's rustc: cargo writes `invoked.timestamp` in the unit's
    fingerprint directory just before (no wrapper, which would add its own start-up to the path)."""
    stamps = glob.glob(os.path.join(app.dir, "target", "debug", ".fingerprint", f"{kind}-*", "invoked.timestamp"))
    return max((os.stat(s).st_mtime for s in stamps), default=None)


def measure(rounds, apps=("counter", "web")):
    version = cargo_watch_version()
    if version:
        delay = cargo_watch_delay()
        log(f"cargo-watch: {version}, default debounce (--delay) {delay or 'not stated by --help'}")
    else:
        delay = None
        log("cargo-watch is not installed (`cargo install cargo-watch --locked`): its column is skipped")
    results = {"cargo_watch": {"version": version, "delay": delay}}
    for kind in apps:
        app = App(f"watch-{kind}", os.path.join(ROOT, "testdata", kind), kind)
        step(f"{kind}: save → new output, ipbp-ld watch, cargo build{' and cargo-watch' if version else ''} "
             "side by side")
        app.prepare()
        t = time.time()
        run(["cargo", "build"], cwd=app.dir, env=env_for(kind))
        log(f"  built in {time.time() - t:.1f} s")
        settle()
        # One watch session first, so that cargo builds under watch have recorded the rustc commands.
        round_watch(app, kind, "warm", warm=True)
        rows = []
        sides = [("watch", round_watch, "w"), ("cargo", round_cargo, "c")]
        if version:
            sides.append(("cwatch", round_cargo_watch, "x"))
        for r in range(rounds):
            got = {}
            # The order rotates from round to round, so that no side always runs first.
            for name, fn, tag in sides[r % len(sides):] + sides[:r % len(sides)]:
                got[name] = fn(app, kind, f"{tag}{r}")
            w, c = got["watch"], got["cargo"]
            row = {"watch": w, "cargo": c, "ratio": w["total_ms"] / c["total_ms"]}
            msg = (f"  round {r + 1}/{rounds}: watch {w['total_ms']:.0f} ms (rustc started after "
                   f"{w['watch_ms']} ms), cargo build {c['total_ms']:.0f} ms (rustc started after "
                   f"{c['before_rustc_ms'] or float('nan'):.0f} ms): {row['ratio']:.2f}")
            if "cwatch" in got:
                x = got["cwatch"]
                row["cwatch"] = x
                row["ratio_cwatch"] = w["total_ms"] / x["total_ms"]
                msg += (f"; cargo-watch {x['total_ms']:.0f} ms (cargo build started after {x['run_ms']:.0f} ms): "
                        f"{row['ratio_cwatch']:.2f}")
            rows.append(row)
            log(msg)
        results[kind] = rows
    return results


def section(results, rounds, via="scripts/bench_watch.py"):
    cwinfo = results.get("cargo_watch") or {}
    apps = {k: v for k, v in results.items() if k != "cargo_watch"}
    with_cw = bool(cwinfo.get("version")) and all("cwatch" in r for rows in apps.values() for r in rows)
    out = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `{via} --rounds {rounds}`; "
           f"load average {os.getloadavg()[0]:.2f} at the end.", ""]
    if with_cw:
        out += [f"cargo-watch: `cargo watch -x build` with its defaults ({cwinfo['version']}; debounce `--delay` "
                f"{cwinfo.get('delay') or 'default, not stated by its --help'}).", "",
                "| app | save → new output: watch | `cargo build` typed right after the save | watch ÷ cargo build "
                "| cargo-watch + `cargo build` | watch ÷ cargo-watch | aim |",
                "|---|---:|---:|---:|---:|---:|---|"]
    else:
        out += ["cargo-watch: not installed (`cargo install cargo-watch --locked`), its column skipped.", "",
                "| app | save → new output: watch | `cargo build` typed right after the save | watch ÷ cargo build | aim |",
                "|---|---:|---:|---:|---|"]
    for kind, rows in apps.items():
        ratio = median([r["ratio"] for r in rows])
        aim = "≤ 0.85" if kind == "web" else "report"
        line = (f"| {kind} | {median([r['watch']['total_ms'] for r in rows]):.0f} ms | "
                f"{median([r['cargo']['total_ms'] for r in rows]):.0f} ms | **{ratio:.2f}** | ")
        if with_cw:
            line += (f"{median([r['cwatch']['total_ms'] for r in rows]):.0f} ms | "
                     f"**{median([r['ratio_cwatch'] for r in rows]):.2f}** | ")
        out.append(line + f"{aim} |")
    out += ["", "Where the time goes (medians, ms). watch: from the save's event to rustc started (watch's own "
            "share), then rustc until it calls ipbp-ld, then ipbp-ld until the new code runs (`N ms after rustc "
            "called ipbp-ld`, of which apply in the process), then the program's next output. cargo build: "
            "the same edit; cargo's share is in `cargo build (wall)` and its time before rustc."
            + (" cargo-watch: from the save to its `[Running 'cargo build']` line (its debounce and start-up), "
               "and from the save to its `[Finished running]` line." if with_cw else ""), "",
            "| app | watch: save → rustc started | ipbp-ld: rustc's call → applied | of which apply "
            "| watch: rest (rustc to the link, output) | cargo build: save → rustc started (cargo) "
            "| ipbp-ld: rustc's call → applied | cargo build (wall, incl. rustc's exit after the link) |"
            + (" cargo-watch: save → `cargo build` started | cargo-watch: save → build finished |" if with_cw else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_cw else "")]
    for kind, rows in apps.items():
        w = [r["watch"] for r in rows]
        c = [r["cargo"] for r in rows]

        def med(xs, key):
            vals = [x[key] for x in xs if x.get(key) is not None]
            return median(vals)
        rest = [x["total_ms"] - (x.get("watch_ms") or 0) - (x["ipbp_ms"] or 0) for x in w]
        line = (f"| {kind} | {med(w, 'watch_ms'):.1f} | {med(w, 'ipbp_ms'):.0f} | {med(w, 'apply_ms'):.1f} | "
                f"{median(rest):.0f} | {med(c, 'before_rustc_ms'):.0f} | {med(c, 'ipbp_ms'):.0f} | {med(c, 'cargo_ms'):.0f} |")
        if with_cw:
            x = [r["cwatch"] for r in rows]
            line += f" {med(x, 'run_ms'):.0f} | {med(x, 'cargo_ms'):.0f} |"
        out.append(line)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--apps", default="counter,web", help="comma-separated: counter, web")
    args = ap.parse_args()
    step("building ipbp-ld (release)")
    run(["cargo", "build", "--release", "-q", "-p", "ipbp-ld"], cwd=ROOT)
    os.makedirs(HOME, mode=0o700, exist_ok=True)
    results = measure(args.rounds, args.apps.split(","))
    text = section(results, args.rounds)
    print("\n" + text)
    if not args.no_write:
        from bench_report import write_benchmarks_md
        write_benchmarks_md(text, "bench:watch")


if __name__ == "__main__":
    main()

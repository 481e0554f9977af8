#!/usr/bin/env python3
"""Hot restart figures (BENCHMARKS.md, "Hot restart"): how long a restart into a new build takes,
and what a web service under load sees through restarts.

    scripts/bench_restart.py                  all figures (~4 min warm on 2 cores; the first run
                                              builds axum and tokio for testdata/listenweb)
    scripts/bench_restart.py --edits 5        fewer layout-changing edits (default 20)

Workload: testdata/listenweb, an axum service that takes its socket from `listenfd` and drains its
requests in an `ipbp::on_restart` hook, copied to scripts/out/bench/listenweb and built through the
release ipbp-ld like a user's project.

1. Restart time, `ipbp-ld restart PID` x `--restarts`: from the request ipbp-ld sends to the new
   build's `ipbp::init()` registering (ipbp-ld's `running again` figure; `main` runs right after),
   beside the program's own start (spawn to registration, fresh processes); and, with a client
   asking every 2 ms, from invoking `ipbp-ld restart` to the first answer of the new build.
2. A paced open-loop client at `--rate` requests/s (a new connection each, latency counted from the
   scheduled send time) for a baseline period, then through `--edits` edits that change the layout
   of a static's type, each built with `cargo build` (the service restarts each time): failed
   requests, and the latency p99 of each period. Loopback only, bounded: one service, one client.
Standard library only.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_apps import HOME, ROOT, SHIM, App, Process, app_env, log, run, settle, step  # noqa: E402

RESULTS = os.path.join(ROOT, "scripts", "out", "bench-restart.json")
STATS_PLAIN = "struct Stats {\n    served: u64,\n}"
STATS_WIDE = "struct Stats {\n    served: u64,\n    extra: u64,\n}"


def get(port, timeout=20):
    """One `GET /` on a new connection; the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise IOError(f"answer {head[:40]!r}")
    return body.decode()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class Load:
    """Open-loop paced client: request i is due at start + i/rate; 16 workers send them."""

    def __init__(self, port, rate):
        self.port, self.rate = port, rate
        self.results = []  # (due, latency_s, ok, error)
        self.lock = threading.Lock()
        self.next = 0
        self.stop_at = None
        self.start = time.monotonic()
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(16)]
        for t in self.threads:
            t.start()

    def work(self):
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            due = self.start + i / self.rate
            if self.stop_at is not None and due >= self.stop_at:
                return
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                get(self.port)
                ok, err = True, None
            except Exception as e:  # noqa: BLE001 - every failure counts
                ok, err = False, str(e)
            with self.lock:
                self.results.append((due, time.monotonic() - due, ok, err))

    def finish(self):
        self.stop_at = time.monotonic()
        for t in self.threads:
            t.join()

    def between(self, t0, t1):
        return [r for r in self.results if t0 <= r[0] < t1]


def summary(rs):
    lat = [r[1] * 1000 for r in rs if r[2]]
    return {
        "requests": len(rs),
        "failed": sum(1 for r in rs if not r[2]),
        "errors": sorted({r[3] for r in rs if not r[2]})[:5],
        "p50_ms": round(pct(lat, 50), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(max(lat), 1) if lat else None,
    }


def own_start(app, n=10):
    """Spawn to registration of fresh processes (the program's own start), in ms."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        p = Process(app.program(), app.dir, app_env({"LISTENWEB_ADDR": "127.0.0.1:0"}))
        path = os.path.join(HOME, f"{p.pid}.process")
        while not os.path.exists(path):
            time.sleep(0.0002)
        times.append((time.monotonic() - t0) * 1000)
        p.stop()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds of load before the edits")
    args = ap.parse_args()

    step("Building ipbp-ld (release)")
    run(["cargo", "build", "--release", "-q", "-p", "ipbp-ld"], cwd=ROOT)
    os.makedirs(HOME, mode=0o700, exist_ok=True)
    app = App("listenweb", os.path.join(ROOT, "testdata", "listenweb"), "listenweb")
    app.prepare()
    step("Building testdata/listenweb through ipbp-ld")
    run(["cargo", "build", "-q"], cwd=app.dir, env=app_env())
    app.wait_for_recording()
    settle()

    step("The program's own start (fresh processes)")
    start_ms = own_start(app)
    log(f"  spawn -> ipbp::init() registered: median {statistics.median(start_ms):.1f} ms")

    proc = Process(app.program(), app.dir, app_env({"LISTENWEB_ADDR": "127.0.0.1:0"}))
    proc.wait_registered()
    _, line = proc.wait_for(lambda l: l.startswith("listening "))
    port = int(line.split("port=")[1].split()[0])

    step(f"Restart time: ipbp-ld restart x {args.restarts}")
    decision_ms, answering_ms = [], []
    answers = []  # (time, restarts)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                body = get(port)
                answers.append((time.monotonic(), int(body.split("restarts=")[1].split()[0])))
            except Exception:  # noqa: BLE001 - counted below as no answer
                pass
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for k in range(1, args.restarts + 1):
        t0 = time.monotonic()
        p = run([SHIM, "restart", str(proc.pid)], env=app_env())
        ms = float(p.stderr.split("running again ")[1].split(" ms")[0])
        decision_ms.append(ms)
        while not any(r == k for _, r in answers):
            time.sleep(0.001)
        answering_ms.append((min(t for t, r in answers if r == k) - t0) * 1000)
        time.sleep(0.2)
    stop.set()
    poller.join()
    log(f"  request -> new build registered: median {statistics.median(decision_ms):.1f} ms, "
        f"ipbp-ld invoked -> first answer of the new build: median {statistics.median(answering_ms):.1f} ms")

    step(f"{args.rate} req/s: {args.baseline:.0f} s baseline, then {args.edits} layout-changing edits")
    load = Load(port, args.rate)
    time.sleep(args.baseline)
    t_edits = time.monotonic()
    build_s, restarted = [], 0
    for i in range(args.edits):
        text = open(os.path.join(app.dir, "src", "main.rs")).read()
        wide = STATS_WIDE in text
        text = text.replace(STATS_WIDE, STATS_PLAIN) if wide else text.replace(STATS_PLAIN, STATS_WIDE)
        text = text.replace("Stats { served: 0, extra: 0 }", "Stats { served: 0 }") if wide else text.replace(
            "Stats { served: 0 }", "Stats { served: 0, extra: 0 }")
        open(os.path.join(app.dir, "src", "main.rs"), "w").write(text)
        b0 = time.monotonic()
        p = run(["cargo", "build"], cwd=app.dir, env=app_env())
        build_s.append(time.monotonic() - b0)
        if f"Restarted listenweb (pid {proc.pid})" in p.stderr:
            restarted += 1
        else:
            log(p.stderr)
    t_end = time.monotonic()
    time.sleep(1)
    load.finish()
    base = summary(load.between(load.start, t_edits))
    during = summary(load.between(t_edits, t_end))
    log(f"  baseline: {base}\n  through the edits: {during}\n  restarted {restarted} of {args.edits}")
    proc.stop()

    results = {
        "own_start_ms": round(statistics.median(start_ms), 1),
        "restart_to_registered_ms": {"median": round(statistics.median(decision_ms), 1),
                                     "p90": round(pct(decision_ms, 90), 1)},
        "restart_to_answering_ms": {"median": round(statistics.median(answering_ms), 1),
                                    "p90": round(pct(answering_ms, 90), 1)},
        "load": {"rate": args.rate, "edits": args.edits, "restarted": restarted,
                 "build_s_median": round(statistics.median(build_s), 2), "baseline": base, "through_edits": during},
        "machine": {"cores": os.cpu_count(), "load_avg": os.getloadavg()[0]},
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

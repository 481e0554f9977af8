"""P12 of scripts/bench.py: a working day in one process. The counter is started once and patched
N times in a row (default 1000) by real `cargo build`s through ipbp-ld, alternating two edits of
the same function; after every patch the new text must show in the running program. Per patch it
records the manifest's times (rustc calling ipbp-ld -> new code running; apply in the process)
and what the process holds (open descriptors, memory mappings, RSS from /proc). The figure: the
first patches against the last ones (medians of 20), and the 10th against the Nth.

Standard library only."""

import os
import statistics

from bench_apps import App, Patcher, Process, app_env, log, step

EDIT = ("src/main.rs", 'let msg = "hello";', 'let msg = "{v}";')
WINDOW = 20

# The figures of the last run before issue 19's apply changes (patches without `DT_SONAME`, no
# `dl_iterate_phdr` walk per load, the loader's names packed): `scripts/bench.py --only P12
# --patches 1000` on this machine, idle, 2026-12-07 19:24 (commit 89fabd8), medians of patches
# 1-20 and 981-1000. Shown beside each new run so the table keeps what the changes did.
BEFORE = {
    "label": "before the changes (idle 19:24 run): first → last (ratio)",
    "applied_ms": (6, 7, 1.04), "apply_ms": (1.03, 1.54, 1.49), "diff_ms": (1.3, 1.1, 0.86),
    "deliver_ms": (1.5, 2.1, 1.42), "detours": (3, 3, 1.00), "fds": (5, 5, 1.00),
    "maps": (92, 3036, 32.83), "rss_kib": (4198, 18114, 4.31),
}


def resources(pid):
    """(open descriptors, mappings, RSS in KiB) of a running process, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for _ in f)
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, maps, rss


def run(args, results, counter):
    n = args.patches
    step(f"P12: the counter patched {n} times in one process")
    proc = Process(counter.program(), counter.dir, app_env({"COUNTER_PERIOD_MS": "20"}))
    rows = []
    try:
        proc.wait_for(lambda l: l.startswith("tick "))
        proc.wait_registered()
        start = resources(proc.pid)
        patcher = Patcher(counter, proc, EDIT, ("v1", "v2"))
        for i in range(n):
            mark = proc.mark()
            p = patcher.once(i)
            proc.wait_for(lambda l: f"msg={p['variant']} " in l, since=mark)
            t = p["manifest"]["timings"]
            fds, maps, rss = resources(proc.pid)
            rows.append({
                "patch": i + 1,
                "applied_ms": t["applied_ms"],
                "apply_ms": (t["load_us"] + t["install_us"]) / 1000.0,
                "load_ms": t["load_us"] / 1000.0, "install_ms": t["install_us"] / 1000.0,
                "diff_ms": t["diff_ms"], "plan_ms": t["plan_ms"], "emit_ms": t["emit_ms"],
                "deliver_ms": t["deliver_ms"],
                "detours": len(p["manifest"].get("installs", [])),
                "fds": fds, "maps": maps, "rss_kib": rss,
            })
            if (i + 1) % 25 == 0 or i + 1 == n:
                r = rows[-1]
                log(f"  patch {i + 1}/{n}: {r['applied_ms']:.0f} ms after rustc called ipbp-ld, apply "
                    f"{r['apply_ms']:.2f} ms; {fds} descriptors, {maps} mappings, RSS {rss / 1024:.1f} MB")
    finally:
        proc.stop()
    results["P12"] = {"start": dict(zip(("fds", "maps", "rss_kib"), start)), "rows": rows}


def md(results, args):
    """The P12 section of BENCHMARKS.md."""
    m, p = results["machine"], results["P12"]
    rows, start = p["rows"], p["start"]
    n = len(rows)
    w = min(WINDOW, max(1, n // 4))
    first, last = rows[:w], rows[-w:]
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    tenth = rows[min(9, n - 1)]
    nth = rows[-1]
    ratio = lambda k: med(last, k) / med(first, k) if med(first, k) else float("nan")
    lines = [
        f"Measured {m['date']} by `scripts/bench.py --only P12 --patches {n}` on {m['cpu']} "
        f"({m['cpus']} CPUs), {m['rustc']}; load average {m['load_average']:.2f} at the start.",
        "",
        f"One counter process patched {n} times in a row by `cargo build` through ipbp-ld, alternating "
        f"two edits of `tick`'s message; every patch's text was seen in the program's output before the "
        f"next edit. Times from the patch manifests; descriptors, mappings and RSS from `/proc/<pid>` "
        f"after each patch (before the first: {start['fds']} descriptors, {start['maps']} mappings, "
        f"RSS {start['rss_kib'] / 1024:.1f} MB).",
        "",
        f"| | patches 1–{w}: median (fastest) | patches {n - w + 1}–{n}: median (fastest) | last ÷ first "
        f"(medians) | patch {tenth['patch']} | patch {nth['patch']} | {BEFORE['label']} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label, fmt in [
        ("applied_ms", "rustc calls ipbp-ld → new code runs, ms", "{:.0f}"),
        ("apply_ms", "apply in the process (load + install), ms", "{:.2f}"),
        ("load_ms", "of which the checks and the load (`dlopen`), ms", "{:.2f}"),
        ("install_ms", "of which the install, ms", "{:.2f}"),
        ("diff_ms", "ipbp-ld: diff (with loading), ms", "{:.1f}"),
        ("deliver_ms", "ipbp-ld: until the reply (cumulative), ms", "{:.1f}"),
        ("detours", "entries in the install set", "{:.0f}"),
        ("fds", "open descriptors of the program", "{:.0f}"),
        ("maps", "memory mappings of the program", "{:.0f}"),
        ("rss_kib", "RSS, KiB", "{:.0f}"),
    ]:
        if key not in rows[0]:
            continue
        low = lambda rs: fmt.format(min(r[key] for r in rs))
        before = BEFORE.get(key)
        before = f"{fmt.format(before[0])} → {fmt.format(before[1])} ({before[2]:.2f})" if before else "—"
        lines.append(
            f"| {label} | {fmt.format(med(first, key))} ({low(first)}) | {fmt.format(med(last, key))} "
            f"({low(last)}) | {ratio(key):.2f} | {fmt.format(tenth[key])} | {fmt.format(nth[key])} | {before} |"
        )
    growth = (nth["maps"] - tenth["maps"]) / max(1, nth["patch"] - tenth["patch"])
    rss = (nth["rss_kib"] - tenth["rss_kib"]) / max(1, nth["patch"] - tenth["patch"])
    lines += [
        "",
        f"From patch {tenth['patch']} to patch {nth['patch']}: {growth:.2f} mappings and {rss:.1f} KiB of "
        f"RSS per patch.",
        "",
    ]
    return "\n".join(lines)

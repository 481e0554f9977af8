#!/usr/bin/env python3
"""Replays a captured link (see bench-link.sh) with the plain linker and through ipbp-ld.

Standard library only. Times each run with a monotonic clock around the whole process (spawn to
exit), interleaves the variants in rotating order so drift and noise hit all of them alike, and
reports medians, the ratio of medians and the median of per-round ratios.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 1.10
VARIANTS = ("plain", "ipbp-ld", "inline", "disabled")
LABELS = {
    "plain": "plain cc",
    "ipbp-ld": "ipbp-ld",
    "inline": "ipbp-ld, IPBP_MAP_INLINE=1",
    "disabled": "ipbp-ld, IPBP_DISABLE=1",
}


def read_args(path):
    with open(path, "rb") as f:
        return [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]


def read_env(path):
    env = {}
    with open(path, "rb") as f:
        for entry in f.read().split(b"\0"):
            if b"=" in entry:
                k, v = entry.split(b"=", 1)
                env[os.fsdecode(k)] = os.fsdecode(v)
    # What the loggers and this benchmark set must not leak into the replay.
    for k in list(env):
        if k.startswith(("IPBP_", "BENCH_")):
            del env[k]
    return env


def with_output(args, output):
    """`args` with the value of its (single) `-o` replaced."""
    out = list(args)
    hits = [i for i, a in enumerate(out) if a == "-o"]
    if len(hits) != 1 or hits[0] + 1 >= len(out):
        sys.exit(f"bench-link: expected exactly one `-o <path>` in the captured command, found {len(hits)}")
    out[hits[0] + 1] = output
    return out


def output_of(args):
    return args[args.index("-o") + 1]


def object_inputs(args, cwd):
    """The *.o files rustc wrote for this link (symbols.o and the crate's codegen units)."""
    return [os.path.join(cwd, a) for a in args if not a.startswith("-") and a.endswith(".o")]


def file_inputs(args, cwd):
    return [os.path.join(cwd, a) for a in args if not a.startswith("-") and a.endswith((".o", ".rlib", ".a"))]


def renew(paths):
    """Gives each file a new inode and mtime with the same content, as a rebuild by rustc does."""
    for p in paths:
        tmp = p + ".bench-tmp"
        shutil.copyfile(p, tmp)
        os.replace(tmp, p)


def cpu_of_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, cwd, env):
    """Wall time and CPU time (user + sys of the whole process tree: cc, collect2, lld, ipbp-ld)."""
    c0 = cpu_of_children()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    return elapsed, cpu_of_children() - c0, proc


def summarize(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "min": xs[0],
        "max": xs[-1],
        "p25": q[0],
        "p75": q[2],
        "stdev": statistics.stdev(xs) if len(xs) >= 2 else 0.0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", required=True)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--home", required=True, help="IPBP_HOME for the replays")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mode", choices=("same", "fresh", "both"), default="both")
    ap.add_argument("--bin", default="web")
    ap.add_argument("--json", required=True)
    ap.add_argument("--tsv", required=True)
    a = ap.parse_args()
    if a.runs < 1 or a.warmup < 1:
        sys.exit("bench-link: --runs and --warmup must be at least 1 (the first ipbp-ld run fills its caches)")

    ld_args = read_args(os.path.join(a.capture, "ld.args"))
    cc_args = read_args(os.path.join(a.capture, "cc.args"))
    with open(os.path.join(a.capture, "cwd"), "rb") as f:
        cwd = os.fsdecode(f.read())
    base_env = read_env(os.path.join(a.capture, "env"))
    base_env["IPBP_HOME"] = a.home
    os.makedirs(a.home, mode=0o700, exist_ok=True)

    missing = [p for p in file_inputs(ld_args, cwd) if not os.path.exists(p)]
    if missing:
        sys.exit(f"bench-link: {len(missing)} link inputs are gone (e.g. {missing[0]}); rerun without --no-build")

    deps = os.path.dirname(os.path.join(cwd, output_of(ld_args)))
    outputs = {v: os.path.join(deps, f"ipbp-bench-{v}") for v in VARIANTS}
    commands = {
        "plain": ["cc"] + with_output(cc_args, outputs["plain"]),
        "ipbp-ld": [a.shim] + with_output(ld_args, outputs["ipbp-ld"]),
        "inline": [a.shim] + with_output(ld_args, outputs["inline"]),
        "disabled": [a.shim] + with_output(ld_args, outputs["disabled"]),
    }
    envs = {v: dict(base_env) for v in VARIANTS}
    envs["disabled"]["IPBP_DISABLE"] = "1"
    # ipbp-ld writes the link index from a detached child after the link returns (the JSON map on
    # demand); inline, the link waits for both: the whole of ipbp-ld's work, on the clock.
    envs["inline"]["IPBP_MAP_INLINE"] = "1"
    objects = object_inputs(ld_args, cwd)

    load_before = os.getloadavg()
    modes = ["same", "fresh"] if a.mode == "both" else [a.mode]
    rows = []  # (mode, round, variant, seconds, cpu seconds, warmup)
    results = {}
    warnings = []
    for mode in modes:
        times = {v: [] for v in VARIANTS}
        cpu = {v: [] for v in VARIANTS}
        pair_ratio = {"ipbp-ld": [], "inline": [], "disabled": []}
        cpu_pair_ratio = {"ipbp-ld": [], "inline": [], "disabled": []}
        total = a.warmup + a.runs
        for r in range(total):
            warm = r < a.warmup
            k = r % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            this_round = {}
            this_cpu = {}
            for v in order:
                if mode == "fresh":
                    renew(objects)
                elapsed, cpu_s, proc = run(commands[v], cwd, envs[v])
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr.decode(errors="replace"))
                    sys.exit(f"bench-link: the {v} link failed with exit code {proc.returncode}")
                err = proc.stderr.decode(errors="replace").strip()
                if err and f"[{v}] {err}" not in warnings:
                    warnings.append(f"[{v}] {err}")
                this_round[v] = elapsed
                this_cpu[v] = cpu_s
                rows.append((mode, r, v, elapsed, cpu_s, warm))
            if not warm:
                for v in VARIANTS:
                    times[v].append(this_round[v])
                    cpu[v].append(this_cpu[v])
                for v in pair_ratio:
                    pair_ratio[v].append(this_round[v] / this_round["plain"])
                    cpu_pair_ratio[v].append(this_cpu[v] / this_cpu["plain"])
            status = "warm-up" if warm else f"{r - a.warmup + 1}/{a.runs}"
            print(
                f"  {mode:5} {status:>8}  " + "  ".join(f"{v} {this_round[v] * 1e3:6.0f} ms" for v in VARIANTS),
                file=sys.stderr,
                flush=True,
            )
        s = {v: summarize(times[v]) for v in VARIANTS}
        cs = {v: summarize(cpu[v]) for v in VARIANTS}
        results[mode] = {
            "seconds": times,
            "summary": s,
            "ratio_of_medians": {v: s[v]["median"] / s["plain"]["median"] for v in pair_ratio},
            "median_pairwise_ratio": {v: statistics.median(pair_ratio[v]) for v in pair_ratio},
            "pairwise_ratios": pair_ratio,
            "cpu_seconds": cpu,
            "cpu_summary": cs,
            "cpu_median_pairwise_ratio": {v: statistics.median(cpu_pair_ratio[v]) for v in cpu_pair_ratio},
        }

    # What was linked and recorded (from the last ipbp-ld run).
    same_output = filecmp(outputs["plain"], outputs["ipbp-ld"])
    facts = link_facts(outputs["ipbp-ld"], ld_args, cwd, objects)

    with open(a.tsv, "w") as f:
        f.write("mode\tround\tvariant\tseconds\tcpu_seconds\twarmup\n")
        for mode, r, v, t, c, warm in rows:
            f.write(f"{mode}\t{r}\t{v}\t{t:.6f}\t{c:.6f}\t{int(warm)}\n")
    report = {
        "figure": "P1",
        "target_ratio": TARGET_RATIO,
        # Per mode: median over rounds of (ipbp-ld time / plain time), wall and cpu.
        "p1": {m: r["median_pairwise_ratio"]["ipbp-ld"] for m, r in results.items()},
        "p1_cpu": {m: r["cpu_median_pairwise_ratio"]["ipbp-ld"] for m, r in results.items()},
        # The same with the map and index written before the link returns (all of ipbp-ld's work).
        "p1_inline": {m: r["median_pairwise_ratio"]["inline"] for m, r in results.items()},
        "p1_inline_cpu": {m: r["cpu_median_pairwise_ratio"]["inline"] for m, r in results.items()},
        "bin": a.bin,
        "runs": a.runs,
        "warmup_rounds_discarded": a.warmup,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "rustc": tool_version(["rustc", "-V"]),
            "cc": tool_version(["cc", "--version"]),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "link": facts,
        "outputs_identical": same_output,
        "shim_stderr": warnings,
        "modes": results,
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print_table(report, a)


def filecmp(x, y):
    import filecmp as fc

    return fc.cmp(x, y, shallow=False)


def tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return None


def link_facts(output, ld_args, cwd, objects):
    facts = {
        "output_bytes": os.path.getsize(output),
        "inputs": len(file_inputs(ld_args, cwd)),
        "object_inputs": len(objects),
        "object_input_bytes": sum(os.path.getsize(p) for p in objects),
        "archive_input_bytes": sum(os.path.getsize(p) for p in file_inputs(ld_args, cwd) if not p.endswith(".o")),
    }
    # <target>/ipbp/maps/<output name>/latest.json, as ipbp-ld's map store lays it out.
    d = os.path.dirname(output)
    for _ in range(6):
        if os.path.isfile(os.path.join(d, "CACHEDIR.TAG")):
            root = os.path.join(d, "ipbp")
            break
        d = os.path.dirname(d)
    else:
        root = os.path.join(os.path.dirname(output), ".ipbp")
    latest = os.path.join(root, "maps", os.path.basename(output), "latest.json")
    if os.path.exists(latest):
        facts["map_bytes"] = os.path.getsize(latest)
        with open(latest) as f:
            m = json.load(f)
        facts["map_symbols"] = len(m.get("symbols", []))
        facts["map_inputs"] = len(m.get("inputs", []))
        facts["map_path"] = os.path.realpath(latest)
    else:
        facts["map_bytes"] = None
    fp = os.path.join(root, "fingerprints.tsv")
    if os.path.exists(fp):
        with open(fp) as f:
            facts["fingerprint_cache_lines"] = sum(1 for _ in f)
    return facts


def print_table(rep, a):
    ms = lambda s: f"{s * 1e3:8.1f}"
    f = rep["link"]
    mb = lambda b: f"{b / 1e6:.1f} MB" if b is not None else "none"
    print()
    print(f"P1: linking `{a.bin}` through ipbp-ld vs the plain linker")
    print(
        f"  output {mb(f['output_bytes'])}, {f['inputs']} file inputs ({f['object_inputs']} objects, "
        f"{mb(f['object_input_bytes'])}; archives {mb(f['archive_input_bytes'])}), "
        f"map {mb(f.get('map_bytes'))} with {f.get('map_symbols', '?')} symbols"
    )
    print(
        f"  {rep['runs']} measured rounds per mode after {rep['warmup_rounds_discarded']} discarded warm-up round(s); "
        f"variants interleaved in rotating order"
    )
    m = rep["machine"]
    print(
        f"  {m['cpus']} CPUs, load average {m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after"
        + ("  (busy machine: trust the pairwise and cpu ratios more than the medians)" if max(m['loadavg_before'][0], m['loadavg_after'][0]) > 1.0 else "")
    )
    print()
    print(f"  {'':33} {'wall time':-^56}  {'cpu time':-^16}")
    print(f"  {'mode':6} {'variant':26} {'median':>8} {'p25':>8} {'p75':>8} {'min':>8} {'max':>8}   {'ratio':>6} {'pair':>6}  {'median':>8} {'pair':>6}")
    print(f"  {'':6} {'':26} {'ms':>8} {'ms':>8} {'ms':>8} {'ms':>8} {'ms':>8}   {'med':>6} {'med':>6}  {'ms':>8} {'med':>6}")
    for mode, r in rep["modes"].items():
        for v in VARIANTS:
            s = r["summary"][v]
            ratio = r["ratio_of_medians"].get(v)
            pair = r["median_pairwise_ratio"].get(v)
            cpair = r["cpu_median_pairwise_ratio"].get(v)
            rt = f"{ratio:6.3f}" if ratio else f"{'-':>6}"
            pt = f"{pair:6.3f}" if pair else f"{'-':>6}"
            ct = f"{cpair:6.3f}" if cpair else f"{'-':>6}"
            print(
                f"  {mode:6} {LABELS[v]:26} {ms(s['median'])} {ms(s['p25'])} {ms(s['p75'])} {ms(s['min'])} {ms(s['max'])}   {rt} {pt}"
                f"  {ms(r['cpu_summary'][v]['median'])} {ct}"
            )
    print()
    print("  ratio med = median(variant) / median(plain); pair med = median over rounds of variant/plain")
    print("  cpu time = user + sys of the process tree rustc waits for (cc, collect2, lld, ipbp-ld); robust to a")
    print("             busy machine. ipbp-ld's detached map writer is not in it: see the IPBP_MAP_INLINE=1 row")
    print("  same  = identical inputs each run (incremental rebuild: unchanged objects keep their inodes)")
    print("  fresh = every *.o input rewritten before each run (non-incremental rebuild: all re-hashed)")
    print()
    for mode, r in rep["modes"].items():
        p1 = r["median_pairwise_ratio"]["ipbp-ld"]
        verdict = "meets" if p1 <= TARGET_RATIO else "ABOVE"
        extra = (r["summary"]["ipbp-ld"]["median"] - r["summary"]["plain"]["median"]) * 1e3
        cpu1 = r["cpu_median_pairwise_ratio"]["ipbp-ld"]
        print(
            f"  P1 [{mode}] = {p1:.3f} ({verdict} the {TARGET_RATIO:.2f} target; {extra:+.0f} ms per link by medians; "
            f"cpu ratio {cpu1:.3f})"
        )
    if not rep["outputs_identical"]:
        print("  WARNING: the plain and the ipbp-ld outputs differ")
    else:
        print("  plain and ipbp-ld outputs are byte-identical")
    for w in rep["shim_stderr"]:
        print(f"  stderr: {w}")
    print()
    print(f"  results: {a.json}")
    print(f"  runs:    {a.tsv}")


if __name__ == "__main__":
    main()

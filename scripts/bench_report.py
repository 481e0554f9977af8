"""The report of scripts/bench.py: figures from the rounds, the Markdown table, BENCHMARKS.md."""

import os
import platform
import subprocess
import sys
import time

from bench_apps import ROOT, median

BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")

TARGETS = {"P1": 1.10, "P1b": 1.05, "P2": 0.05, "P3": 50.0, "P4": 1.5, "P5": 2.0, "P6": 5.0, "P8": 3.0, "P9": 1.0}


# Report


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    ver = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gb": round(mem / 1e6, 1), "kernel": platform.release(),
            "rustc": ver(["rustc", "-V"]), "load_average": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def summarize(results):
    """Figures from the rounds: {id: (value text, target text, met or None, detail)}."""
    fig = {}
    if "P1" in results:
        r = results["P1"]
        fig["P1"] = (r["same"], f"{r['same']:.3f}", "≤ 1.10",
                     f"web ({r['output_mb']:.0f} MB, {r['map_symbols']} symbols): plain {r['plain_ms']:.0f} ms, ipbp-ld "
                     f"{r['ipbp_ms']:.0f} ms; rebuilt inputs {r['fresh']:.3f}; map written before returning "
                     f"{r['inline_same']:.3f}; outputs identical: {'yes' if r['identical'] else 'NO'}")
    p1b = results.get("P1b")
    if p1b:
        wall, cpu = p1b_ratios(p1b)
        fig["P1b"] = (max(wall, cpu), f"{wall:.3f} / {cpu:.3f}", "≤ 1.05",
                      f"wall / CPU; see *P1b* below")
    web = results.get("web")
    if web:
        ratios = [w["creation_ms"] / w["relink_ms"] for w in web if w["relink_ms"]]
        if ratios:
            v = median(ratios)
            fig["P2"] = (v, f"{v:.3f}", "≤ 0.05",
                         f"web: patch {median([w['creation_ms'] for w in web]):.1f} ms vs relink "
                         f"{median([w['relink_ms'] for w in web if w['relink_ms']]):.0f} ms")
    counter = results.get("counter")
    if counter:
        v = median([c["applied_ms"] for c in counter])
        web_txt = f"; web {median([w['applied_ms'] for w in web]):.0f} ms" if web else ""
        fig["P3"] = (v, f"{v:.0f} ms", "≤ 50 ms", f"counter{web_txt}; scaled {median([c['scaled_applied_ms'] for c in counter]):.0f} ms")
        v = median([c["scaled_ms"] / c["small_ms"] for c in counter])
        fig["P4"] = (v, f"{v:.2f}", "≤ 1.5", f"counter {median([c['small_ms'] for c in counter]):.1f} ms, scaled "
                     f"{median([c['scaled_ms'] for c in counter]):.1f} ms (diff + plan + emit)")
    hc = results.get("hotcall")
    if hc:
        d = lambda k: median([x["hot_ns"] - x["direct_ns"] for x in hc[k]])
        v = max(d("unpatched"), d("patched"))
        plain = lambda k: median([x["plain_ns"] - x["direct_ns"] for x in hc[k]])
        fig["P5"] = (v, f"{d('unpatched'):+.2f} ns / {d('patched'):+.2f} ns", "≤ 2 ns",
                     f"unpatched / patched; direct call {median([x['direct_ns'] for x in hc['unpatched']]):.2f} ns per call; "
                     f"a function without hot point patched in place: {plain('patched'):+.2f} ns per call "
                     f"(before the patch {plain('unpatched'):+.2f} ns)")
    hundred = results.get("hundred")
    if hundred:
        v = median([h["apply_ms"] for h in hundred])
        live = median([h.get("live_us", 0) for h in hundred])
        fig["P6"] = (v, f"{v:.2f} ms", "≤ 5 ms", f"{hundred[0]['changed']} functions, 8 busy threads on 2 cores: load "
                     f"{median([h['load_us'] for h in hundred]):.0f} us + install {median([h['install_us'] for h in hundred]):.0f} us; "
                     f"every call runs the new code {live:.0f} us into the install (breakpoints placed), the rest "
                     f"waits for the scheduler to run each busy thread once (the check round)")
        pauses = [h.get("pause_us", 0) for h in hundred]
        installs = [h["install_us"] for h in hundred]
        ms = lambda rows, key: f"{median([h[key] for h in rows]) / 1000:.2f}"
        side = ""
        park, again, park_again = (results.get(k) for k in ("hundred_park", "hundred_again", "hundred_park_again"))
        if park:
            side = (f"; side by side with every thread parked (IPBP_INSTALL=park): longest pause {ms(park, 'pause_us')} ms "
                    f"(max {max(h['pause_us'] for h in park) / 1000:.2f}), install {ms(park, 'install_us')} ms")
        if again and park_again:
            side += (f"; the program's second patch (100 jumps retargeted, the first patch's 100 copies given their "
                     f"first jump): pause {ms(again, 'pause_us')} ms, install "
                     f"{ms(again, 'install_us')} ms (parked: pause {ms(park_again, 'pause_us')} ms, install "
                     f"{ms(park_again, 'install_us')} ms)")
        fig["P9"] = (max(pauses) / 1000, f"{median(pauses) / 1000:.2f} ms (max {max(pauses) / 1000:.2f})", "≤ 1 ms",
                     f"longest time any of 8 busy threads was held while {hundred[0].get('detours', 0)} entries "
                     f"got their first jump; whole install {median(installs) / 1000:.2f} ms (max {max(installs) / 1000:.2f}), "
                     f"aim ≤ 2 ms{side}")
    if counter:
        v = median([c["total_ms"] / c["restart"]["total_ms"] for c in counter])
        extra = ""
        if web:
            extra = f"; web {median([w['total_ms'] / w['restart']['total_ms'] for w in web]):.3f}"
        fig["P7"] = (v, f"{v:.3f}", "report", f"counter{extra} (edit → new code running, ÷ cargo build + restart)")
    p8 = []
    for name, rows in (("counter", counter), ("web", web), ("scaled, 100 functions", hundred)):
        if rows:
            p8.append((name, median([r["file_size"] / r["chunk_bytes"] for r in rows]),
                       median([r["file_size"] for r in rows]), median([r["chunk_bytes"] for r in rows])))
    if p8:
        v = p8[0][1]
        fig["P8"] = (v, f"{v:.1f}", "report, aim ≤ 3",
                     "; ".join(f"{n} {r:.1f} ({f / 1e3:.1f} KB for {c / 1e3:.1f} KB of code and data)" for n, r, f, c in p8))
    return fig


def met(fid, value):
    t = TARGETS.get(fid)
    if t is None or value != value:
        return "—"
    return "✅" if value <= t else "❌"


NAMES = {
    "P1": "link through ipbp-ld ÷ plain link",
    "P1b": "workspace rebuild through ipbp-ld ÷ plain",
    "P2": "patch creation ÷ full relink (web)",
    "P3": "rustc calls ipbp-ld → new code running",
    "P4": "patch creation, 10× program ÷ small",
    "P5": "hot call − direct call",
    "P6": "apply a 100-function patch",
    "P7": "edit → new code: ipbp ÷ build + restart",
    "P8": "patch size ÷ code and data patched",
    "P9": "in place: longest pause of a busy thread",
}


def breakdown_table(rows, label):
    if not rows:
        return []
    keys = list(rows[0]["parts"])
    rkeys = list(rows[0]["restart"]["parts"])
    out = [f"**{label}** (medians over {len(rows)} rounds, ms)", "",
           "| ipbp: edit → new code running | ms | | cargo build + restart | ms |", "|---|---:|---|---|---:|"]
    n = max(len(keys), len(rkeys))
    for i in range(n):
        a = f"| {keys[i]} | {median([r['parts'][keys[i]] for r in rows]):.1f} |" if i < len(keys) else "| | |"
        b = f" | {rkeys[i]} | {median([r['restart']['parts'][rkeys[i]] for r in rows]):.0f} |" if i < len(rkeys) else " | | |"
        out.append(a + b)
    out.append(f"| **total** | **{median([r['total_ms'] for r in rows]):.0f}** | | **total** | "
               f"**{median([r['restart']['total_ms'] for r in rows]):.0f}** |")
    out.append("")
    return out


def report_md(results, fig, args):
    m = results["machine"]
    lines = [
        f"Measured {m['date']} by `scripts/bench.py --rounds {args.rounds}` on {m['cpu']} "
        f"({m['cpus']} CPUs, {m['memory_gb']} GB), Linux {m['kernel']}, {m['rustc']}; load average "
        f"{m['load_average']:.2f} at the start.",
        "",
        "| id | figure | result | target | | details |",
        "|---|---|---|---|---|---|",
    ]
    for fid in sorted(NAMES):
        if fid in fig:
            v, text, target, detail = fig[fid]
            lines.append(f"| {fid} | {NAMES[fid]} | **{text}** | {target} | {met(fid, v)} | {detail} |")
    lines.append("")
    lines += breakdown_table(results.get("counter"), "P3 / P7 on counter: where the time goes")
    lines += breakdown_table(results.get("web"), "P3 / P7 on web: where the time goes")
    counter = results.get("counter")
    if counter:
        lines.append("**P4: patch creation steps** (ms, median; `load units` maps the build's objects, "
                     "`index` reads the changed units)")
        lines.append("")
        lines.append("| step | counter | scaled |")
        lines.append("|---|---:|---:|")
        for i, (name, _) in enumerate(counter[0]["small_steps"]):
            s = median([c["small_steps"][i][1] for c in counter])
            g = median([c["scaled_steps"][i][1] for c in counter])
            lines.append(f"| {name} | {s:.2f} | {g:.2f} |")
        lines.append("")
    return "\n".join(lines)


def p1b_ratios(rounds):
    """Medians of the per-round ratios ipbp-ld ÷ plain: (wall, CPU)."""
    return (median([r["ipbp-ld"]["wall"] / r["plain"]["wall"] for r in rounds]),
            median([r["ipbp-ld"]["cpu"] / r["plain"]["cpu"] for r in rounds]))


def p1b_md(results, args):
    """The P1b section: the rebuild's figures side by side."""
    m, rounds = results["machine"], results["P1b"]
    wall, cpu = p1b_ratios(rounds)
    med = lambda config, k: median([r[config][k] for r in rounds])
    i = rounds[-1]["ipbp-ld"]
    lines = [
        f"Measured {m['date']} by `scripts/bench.py --only P1b --rounds {args.rounds}` on {m['cpu']} "
        f"({m['cpus']} CPUs), {m['rustc']}; load average {m['load_average']:.2f} at the start.",
        "",
        f"`touch shared/src/lib.rs && cargo test --no-run --workspace` in the generated workspace "
        f"(scripts/gen_workspace.py): {i['relinked']} of {i['executables']} executables relinked per "
        f"rebuild. Wall and CPU count every process until ipbp-ld's detached writers have exited; "
        f"ratios are medians of per-round ratios over {len(rounds)} interleaved rounds.",
        "",
        "| | plain | ipbp-ld | ipbp-ld ÷ plain | target |",
        "|---|---:|---:|---:|---|",
        f"| wall, s | {med('plain', 'wall'):.2f} | {med('ipbp-ld', 'wall'):.2f} | **{wall:.3f}** | ≤ 1.05 {met('P1b', wall)} |",
        f"| CPU, s | {med('plain', 'cpu'):.2f} | {med('ipbp-ld', 'cpu'):.2f} | **{cpu:.3f}** | ≤ 1.05 {met('P1b', cpu)} |",
        f"| largest process, MB resident | {med('plain', 'maxrss_mb'):.0f} | {med('ipbp-ld', 'maxrss_mb'):.0f} | | |",
        f"| largest detached writer, MB resident | | {med('ipbp-ld', 'detached_maxrss_mb'):.0f} | | |",
        f"| detached writers per rebuild | | {med('ipbp-ld', 'detached'):.0f} | | |",
        f"| `target/ipbp` after the last round | | {rounds[-1]['ipbp_bytes'] / 1e6:.1f} MB "
        f"({rounds[-1]['ipbp_own_bytes'] / 1e6:.1f} MB not shared with the target dir) | | |",
        "",
    ]
    return "\n".join(lines)


def p11_md(results, args, before=None):
    """The P11 section: the layout guard's share of patches made one after another. `before`: the
    results of the same run of an earlier build (`--p11-before`), shown beside."""
    m = results["machine"]
    lines = [
        f"Measured {m['date']} by `scripts/bench.py --only P11 --rounds {args.rounds}` on {m['cpu']} "
        f"({m['cpus']} CPUs), {m['rustc']}; load average {m['load_average']:.2f} at the start.",
        "",
        f"{args.rounds + 1} edits kept one after another in a running server, each patched (patches are "
        "cumulative: the nth carries every unit changed since the process started). The guard's share is "
        "the manifest's `layouts` step; the unit model cache starts empty, so the first patch reads the "
        "DWARF of every changed unit and later ones only of the units their edit changed. P11 is the "
        "median over patches 2 and later.",
        "",
        "Wall time is what the patch waited; CPU time (the guard's thread) is its cost without the waits "
        "for a CPU that other work on a busy machine adds. The target applies to the wall time.",
        "",
        "| program | first patch: wall ms, CPU ms (changed units) | **P11**: patches 2+, wall, median ms (max) | "
        "patches 2+, CPU, median ms (max) |" + (" before: P11 wall, CPU, median ms |" if before else "")
        + " changed units at the last patch | plan, median ms | target |",
        "|---|---:|---:|---:|" + ("---:|" if before else "") + "---:|---:|---|",
    ]

    def later(rows, field):
        return [r.get(field, float("nan")) for r in rows[1:]] or [float("nan")]

    for key, name, target in (("guard_web", "web (487 units)", 5.0),
                              ("guard_webscaled", "web + 80 page modules (gen_webscaled.py)", 50.0)):
        rows = results.get(key)
        if not rows:
            continue
        wall, cpu = later(rows, "layouts_ms"), later(rows, "cpu_ms")
        v = median(wall)
        ok = "✅" if v <= target else "❌"
        first = rows[0]
        was = ""
        if before:
            old = before.get(key) or [{}]
            was = f" {median(later(old, 'layouts_ms')):.1f}, {median(later(old, 'cpu_ms')):.1f} |"
        lines.append(f"| {name} | {first['layouts_ms']:.1f}, {first.get('cpu_ms', float('nan')):.1f} "
                     f"({first['changed_objects']}) | **{v:.1f}** ({max(wall):.1f}) | {median(cpu):.1f} "
                     f"({max(cpu):.1f}) |{was} {rows[-1]['changed_objects']} | "
                     f"{median([r['plan_ms'] for r in rows]):.1f} | ≤ {target:.0f} ms {ok} |")
    if before:
        bm = before["machine"]
        lines += ["", f"Before: {before.get('label', 'an earlier build')}, measured {bm['date']} in the same way "
                  f"(load average {bm['load_average']:.2f} at its start)."]
    lines.append("")
    return "\n".join(lines)


def write_benchmarks_md(section, name="bench"):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(BENCHMARKS_MD).read() if os.path.exists(BENCHMARKS_MD) else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        sys.exit(f"bench: {BENCHMARKS_MD} lacks the {begin} … {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(BENCHMARKS_MD, "w") as f:
        f.write(f"{head}{begin}\n{section}\n{end}{tail}")

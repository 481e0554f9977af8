"""The workloads of scripts/bench.py: copies of the test apps built through ipbp-ld (or the plain
linker), the programs they run, and patching them. Standard library only."""

import fcntl
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "scripts", "out", "bench")
SHIM = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ipbp-ld")
HOME = os.path.join(OUT, "home")  # IPBP_HOME of every benchmarked process
BIN = os.path.join(OUT, "bin")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def step(msg):
    log(f"\n==> {msg}")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def run(cmd, cwd=None, env=None, check=True):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit(f"bench: `{' '.join(cmd)}` failed with exit code {p.returncode} (in {cwd or os.getcwd()})")
    return p


# Apps


class App:
    """A copy of a test app under scripts/out/bench, built through ipbp-ld (or the plain linker)."""

    def __init__(self, name, source, binary, plain=False):
        self.name = name
        self.dir = os.path.join(OUT, name)
        self.source = source
        self.binary = binary
        self.plain = plain
        self.rustc_log = os.path.join(self.dir, "rustc-times.log")
        self.link_log = os.path.join(self.dir, "link-times.log")
        self.edited = {}  # file -> the text an edit last put there

    def prepare(self):
        """Fresh sources (the target directory is kept: dependencies build once)."""
        os.makedirs(self.dir, exist_ok=True)
        for entry in os.listdir(self.dir):
            if entry not in ("target",):
                path = os.path.join(self.dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        self.edited = {}
        if callable(self.source):
            self.source(self.dir)
        else:
            copy_tree(self.source, self.dir)
        toml = os.path.join(self.dir, "Cargo.toml")
        text = open(toml).read().replace('"../../patch-runtime"', json.dumps(os.path.join(ROOT, "patch-runtime")))
        open(toml, "w").write(text)
        os.makedirs(os.path.join(self.dir, ".cargo"), exist_ok=True)
        linker = os.path.join(BIN, "timed-cc") if self.plain else SHIM
        with open(os.path.join(self.dir, ".cargo", "config.toml"), "w") as f:
            f.write(f'[target.x86_64-unknown-linux-gnu]\nlinker = "{linker}"\n')

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IPBP_", "CARGO_TARGET_"))}
        env["IPBP_HOME"] = HOME
        env["RUSTC_WRAPPER"] = os.path.join(BIN, "timed-rustc")
        env["BENCH_RUSTC_LOG"] = self.rustc_log
        env["BENCH_CRATE"] = self.binary
        env["BENCH_LINK_LOG"] = self.link_log
        return env

    def build(self):
        """`cargo build`; returns (start, end, stderr)."""
        for f in (self.rustc_log, self.link_log):
            if os.path.exists(f):
                os.remove(f)
        t0 = time.time()
        p = run(["cargo", "build"], cwd=self.dir, env=self.env(), check=False)
        t1 = time.time()
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            sys.exit(f"bench: cargo build of {self.dir} failed")
        return t0, t1, p.stderr

    def wait_for_recording(self):
        """Waits until ipbp-ld's detached writers (link index and collection, after the link
        returns) are done, so they do not compete with the next measurement: they hold each map
        directory's lock while writing."""
        for lock in glob.glob(os.path.join(self.dir, "target", "ipbp", "maps", "*", ".lock")):
            with open(lock) as f:
                fcntl.flock(f, fcntl.LOCK_SH)

    def rustc_times(self):
        """(start, end) of the last rustc run for the app's binary crate."""
        return last_times(self.rustc_log)

    def link_times(self):
        return last_times(self.link_log)

    def edit(self, edit, variant):
        """Puts `variant` into the edit's template, in place of the original or the last variant."""
        path, original, template = edit
        full = os.path.join(self.dir, path)
        text = open(full).read()
        current = self.edited.get(path, original)
        if current not in text:
            sys.exit(f"bench: {full} does not contain {current!r}: update the edit in scripts/bench.py")
        new = template.replace("{v}", variant)
        open(full, "w").write(text.replace(current, new, 1))
        self.edited[path] = new

    def program(self):
        return os.path.join(self.dir, "target", "debug", self.binary)

    def patches_of(self, pid):
        root = os.path.join(self.dir, "target", "ipbp", "patches")
        for d in os.listdir(root) if os.path.isdir(root) else []:
            if d.startswith(f"{pid}-"):
                return os.path.join(root, d)
        return None

    def manifest(self, pid, generation):
        d = self.patches_of(pid)
        path = d and os.path.join(d, f"patch-{generation}.json")
        if not path or not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)


def last_times(path):
    try:
        lines = open(path).read().split()
    except FileNotFoundError:
        return None
    if len(lines) < 2:
        return None
    return float(lines[-2]), float(lines[-1])


def write_wrappers():
    os.makedirs(BIN, exist_ok=True)
    # Timestamps around rustc for the benchmarked crate. bash's EPOCHREALTIME reads the clock
    # without starting a process, so the wrapper adds about a millisecond.
    with open(os.path.join(BIN, "timed-rustc"), "w") as f:
        f.write("""#!/usr/bin/env bash
start=$EPOCHREALTIME
"$@"
rc=$?
end=$EPOCHREALTIME
for a in "$@"; do
    if [ "${prev:-}" = --crate-name ] && [ "$a" = "${BENCH_CRATE:-}" ] && [ -n "${BENCH_RUSTC_LOG:-}" ]; then
        echo "$start $end" >>"$BENCH_RUSTC_LOG"
    fi
    prev=$a
done
exit $rc
""")
    # The plain linker (rustc's default `cc`), with timestamps.
    with open(os.path.join(BIN, "timed-cc"), "w") as f:
        f.write("""#!/usr/bin/env bash
start=$EPOCHREALTIME
cc "$@"
rc=$?
[ -n "${BENCH_LINK_LOG:-}" ] && echo "$start $EPOCHREALTIME" >>"$BENCH_LINK_LOG"
exit $rc
""")
    for w in ("timed-rustc", "timed-cc"):
        os.chmod(os.path.join(BIN, w), 0o755)


# Running programs


class Process:
    """A started app; stdout lines are collected with the time they arrived."""

    def __init__(self, program, cwd, env, stdin=False):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [program],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait_for(self, pred, since=0, timeout=60):
        """The first line after `since` matching `pred`: (time, line)."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, line in self.lines[since:]:
                    if pred(line):
                        return t, line
                since = len(self.lines)
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(l for _, l in self.lines[-10:])
                    sys.exit(f"bench: pid {self.pid} did not print what was expected in {timeout} s:\n{tail}")
                self.cond.wait(left)

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def wait_registered(self):
        path = os.path.join(HOME, f"{self.pid}.process")
        for _ in range(400):
            if os.path.exists(path):
                return
            time.sleep(0.025)
        sys.exit(f"bench: pid {self.pid} never registered in {HOME} (was it built through ipbp-ld?)")


def settle(limit=90):
    """Waits (up to `limit` seconds) for the machine to calm down after building: until the
    1-minute load average is below 1."""
    t = time.time()
    while os.getloadavg()[0] >= 1.0 and time.time() - t < limit:
        time.sleep(2)
    log(f"  load average {os.getloadavg()[0]:.2f} (waited {time.time() - t:.0f} s for it to settle)")


def app_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPBP_")}
    env["IPBP_HOME"] = HOME
    env.update(extra or {})
    return env


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def patched_line(stderr, pid):
    """cargo's `Patched <prog> (pid N): …` line for `pid`, or exit with what cargo printed."""
    for line in stderr.splitlines():
        line = line.strip()
        if f"(pid {pid})" in line and line.split()[0] in ("Patched", "Skipped", "Unchanged"):
            if line.startswith("Patched"):
                return line
            sys.exit(f"bench: the process was not patched:\n{stderr}")
    sys.exit(f"bench: no status line for pid {pid} in cargo's output:\n{stderr}")


class Patcher:
    """Edits an app whose process runs, rebuilds, and returns the patch's manifest and timeline."""

    def __init__(self, app, proc, edit, variants):
        self.app, self.proc, self.edit, self.variants = app, proc, edit, variants
        self.generation = 0

    def once(self, round_no):
        variant = self.variants[round_no % len(self.variants)]
        self.app.edit(self.edit, variant)
        t0, t1, stderr = self.app.build()
        self.app.wait_for_recording()
        line = patched_line(stderr, self.proc.pid)
        self.generation += 1
        m = self.app.manifest(self.proc.pid, self.generation)
        if m is None:
            sys.exit(f"bench: no manifest for patch {self.generation} of pid {self.proc.pid}")
        return {"variant": variant, "cargo_start": t0, "cargo_end": t1, "status": line,
                "manifest": m, "rustc": self.app.rustc_times()}


def copy_tree(src, dst):
    """Copies the entries of `src` into `dst`, leaving out build output. The copies get new
    modification times, so cargo rebuilds what a previous run's edits left in the target directory."""
    for entry in os.listdir(src):
        if entry == "target":
            continue
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        shutil.copytree(s, d, copy_function=shutil.copy) if os.path.isdir(s) else shutil.copy(s, d)


def generate_scaled(dst):
    """The scaled variant of counter (scripts/gen_scaled.py), generated next to `dst` and copied
    in (the generator replaces its output directory, and `dst` keeps its target directory)."""
    tmp = dst + ".generated"
    run([sys.executable, os.path.join(ROOT, "scripts", "gen_scaled.py"), tmp])
    copy_tree(tmp, dst)
    shutil.rmtree(tmp)


def generate_webscaled(dst):
    """The large web program of P11 (scripts/gen_webscaled.py), generated next to `dst` and
    copied in, as `generate_scaled` does."""
    tmp = dst + ".generated"
    run([sys.executable, os.path.join(ROOT, "scripts", "gen_webscaled.py"), tmp])
    copy_tree(tmp, dst)
    shutil.rmtree(tmp)


# P1b: a whole incremental workspace rebuild


class RebuildWorkspace:
    """The generated workspace of P1b (scripts/gen_workspace.py) under scripts/out/bench/p1b, with
    one target directory per linker: `cargo test --no-run --workspace` after touching the library
    every crate depends on relinks all of its executables."""

    TOUCHED = os.path.join("shared", "src", "lib.rs")

    def __init__(self):
        self.dir = os.path.join(OUT, "p1b")
        self.src = os.path.join(self.dir, "src")

    def target(self, config):
        return os.path.join(self.dir, f"target-{config}")

    def prepare(self):
        """Fresh sources (target directories are kept: dependencies build once), and one build per
        linker so every round starts from the same state."""
        if os.path.isdir(self.src):
            shutil.rmtree(self.src)
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import gen_workspace  # noqa: E402
        gen_workspace.generate(self.src)
        run(["cargo", "generate-lockfile", "--offline"], cwd=self.src, check=False)
        for config in ("plain", "ipbp-ld"):
            r = self.rebuild(config)
            if r["exit"] != 0:
                sys.exit(f"bench: the first `cargo test --no-run` of {self.src} ({config}) failed:\n{r['stderr']}")

    def env(self, config):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("IPBP_", "CARGO_TARGET_", "RUSTC_WRAPPER", "CARGO_BUILD_"))}
        env["CARGO_TARGET_DIR"] = self.target(config)
        env["CARGO_TERM_COLOR"] = "never"
        if config == "ipbp-ld":
            env["CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"] = SHIM
            env["IPBP_HOME"] = HOME
        return env

    def touch(self):
        os.utime(os.path.join(self.src, self.TOUCHED))

    def rebuild(self, config):
        """`cargo test --no-run --workspace`, measured until every process it started has exited
        (ipbp-ld's detached writers included): wall and CPU seconds, the largest resident set of
        any one process and of any detached one, and how many executables were (re)linked."""
        start = time.time()
        r = measured(["cargo", "test", "--no-run", "--workspace"], self.src, self.env(config))
        exes = [l.split("(", 1)[1].rstrip(")") for l in r["stderr"].splitlines() if "Executable " in l and "(" in l]
        paths = [e if os.path.isabs(e) else os.path.join(self.src, e) for e in exes]
        paths.append(os.path.join(self.target(config), "debug", "app"))  # the program, for its tests
        r["executables"] = len(paths)
        r["relinked"] = sum(1 for p in paths if os.path.exists(p) and os.path.getmtime(p) >= start - 1)
        return r

    def ipbp_size(self):
        """`target/ipbp` of the ipbp-ld configuration: bytes of its files (each inode once), and
        the disk only it holds (files with no other link: the target directory does not share
        them)."""
        seen, apparent, own = set(), 0, 0
        for d, _, files in os.walk(os.path.join(self.target("ipbp-ld"), "ipbp")):
            for f in files:
                try:
                    st = os.lstat(os.path.join(d, f))
                except FileNotFoundError:
                    continue
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                apparent += st.st_size
                if st.st_nlink == 1:
                    own += st.st_blocks * 512
        return apparent, own


def measured(cmd, cwd, env):
    """Runs `cmd` under a subreaper (this file run with --reap): processes it leaves behind are
    waited for and counted too. Returns {wall, cpu, maxrss_mb, detached_maxrss_mb, detached,
    exit, stderr}."""
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--reap", *cmd], cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: the measuring helper failed: {p.stderr}")
    r = json.loads(p.stdout.splitlines()[-1])
    r["stderr"] = p.stderr
    return r


def reap_main(cmd):
    """The helper behind `measured`: becomes a child subreaper (orphans of the command, such as
    ipbp-ld's detached writers, become its children), runs the command, waits for every process,
    and sums their resource use (wait4 reports each child with the descendants it waited for)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("bench: prctl(PR_SET_CHILD_SUBREAPER) failed")
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    cpu, maxrss, detached_maxrss, detached, exit_code, cargo_done = 0.0, 0, 0, 0, None, None
    while True:
        try:
            pid, status, ru = os.wait4(-1, 0)
        except ChildProcessError:
            break
        cpu += ru.ru_utime + ru.ru_stime
        maxrss = max(maxrss, ru.ru_maxrss)
        if pid == child.pid:
            exit_code = os.waitstatus_to_exitcode(status)
            cargo_done = time.monotonic() - t0
        else:
            detached += 1
            detached_maxrss = max(detached_maxrss, ru.ru_maxrss)
    wall = time.monotonic() - t0
    print(json.dumps({"wall": wall, "cargo_wall": cargo_done, "cpu": cpu, "maxrss_mb": maxrss / 1024,
                      "detached_maxrss_mb": detached_maxrss / 1024, "detached": detached, "exit": exit_code}))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--reap":
    reap_main(sys.argv[2:])

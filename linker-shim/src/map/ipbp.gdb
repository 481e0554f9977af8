# ipbp for gdb: `step` from unpatched code into a function a patch replaced stops in its new
# version. Load it with `gdb -p PID -x target/ipbp/debug/ipbp.gdb` (or `source` it).
#
# Why it is needed: when `step` enters a function, gdb puts the breakpoint that ends the step at
# the end of the prologue of the function at the call's target, which it reads from the
# executable alone. A patched function's old entry holds a jump to its new version, so that
# breakpoint is never reached and the program runs on. So before each `step` this arms, for the
# stepping thread only, a breakpoint at the end of the prologue of the newest version of every
# function the patches redirect (the newest loaded patch's manifest, `patch-<n>.json` beside
# `patch-<n>.so`, lists them all: patches are cumulative), and removes them when the program
# stops. gdb has one `hook-step` and one `hookpost-step`: a definition of yours made before this
# file is loaded is kept and runs after ipbp's part; one made after replaces ipbp's (add
# `python _ipbp_arm()` / `python _ipbp_disarm()` to it then).
python
import json as _ipbp_json
import re as _ipbp_re

# Loaded again: the handler of the earlier load goes.
try:
    gdb.events.stop.disconnect(_ipbp_stopped)
except (NameError, ValueError, RuntimeError):
    pass

_ipbp_armed = []


def _ipbp_newest_manifest():
    # `patch-<n>.so`, or `patch-<n>.<attempt>.so` when an earlier attempt was loaded but not
    # installed; `patch-<n>.json` describes the last attempt.
    newest = None
    for objfile in gdb.objfiles():
        found = _ipbp_re.search(r"^(.*)/patch-(\d+)(?:\.\d+)?\.so$", objfile.filename or "")
        if found and (newest is None or int(found.group(2)) > newest[0]):
            newest = (int(found.group(2)), "%s/patch-%s.json" % (found.group(1), found.group(2)))
    if newest is None:
        return None
    try:
        with open(newest[1]) as f:
            return _ipbp_json.load(f)
    except (OSError, ValueError):
        return None


def _ipbp_after_prologue(pc):
    """The first line-table row of the function at `pc` on another line than its entry's."""
    block = gdb.block_for_pc(pc)
    while block is not None and block.function is None:
        block = block.superblock
    sal = gdb.find_pc_line(pc)
    if block is None or sal.symtab is None:
        return pc
    for row in sal.symtab.linetable():
        if pc < row.pc < block.end and row.line > 0 and row.line != sal.line:
            return row.pc
    return pc


def _ipbp_stopped(event):
    # The breakpoints are silent (gdb would print "Temporary breakpoint -N, "): the frame is
    # printed as a `step` prints it.
    ours = getattr(event, "breakpoints", None) or []
    if any(bp in _ipbp_armed for bp in ours):
        frame = gdb.execute("frame", to_string=True)
        gdb.write(_ipbp_re.sub(r"^#0\s+", "", frame))
    _ipbp_disarm()


def _ipbp_disarm(*_):
    while _ipbp_armed:
        bp = _ipbp_armed.pop()
        if bp.is_valid():
            bp.delete()


def _ipbp_arm():
    _ipbp_disarm()
    manifest = _ipbp_newest_manifest()
    thread = gdb.selected_thread()
    if manifest is None or thread is None:
        return
    for install in manifest.get("installs", []):
        if install.get("kind") != "detour":
            continue
        try:
            at = _ipbp_after_prologue(int(install["new"], 16))
            bp = gdb.Breakpoint("*%#x" % at, internal=True, temporary=True)
            bp.silent = True
            bp.thread = thread.global_num
            _ipbp_armed.append(bp)
        except (gdb.error, KeyError, ValueError):
            continue


def _ipbp_user_body(shown):
    """The commands of a user-defined command as `show user` prints them: after a title line,
    each command indented by two spaces more than the block it is in — except the lines of a
    `python` block, printed as written (at column 0), up to its `end`, indented again."""
    body, raw_end = [], None
    for line in shown.splitlines()[1:]:
        if raw_end is not None:
            if line == raw_end:
                raw_end = None
                body.append(line[2:])
            else:
                body.append(line)
            continue
        if not line.strip():
            continue
        body.append(line[2:] if line.startswith("  ") else line)
        if line.strip() in ("python", "py", "python-interactive", "pi"):
            raw_end = line[: len(line) - len(line.lstrip())] + "end"
    return body


def _ipbp_hook(name, call):
    # Defines hook `name` as `call` followed by the user's own definition of it, if any. Loading
    # this file twice keeps one call.
    ours = "python %s()" % call
    try:
        shown = gdb.execute("show user %s" % name, to_string=True)
    except gdb.error:
        shown = ""
    theirs = [l for l in _ipbp_user_body(shown) if l != ours]
    confirm = gdb.parameter("confirm")
    gdb.execute("set confirm off")
    try:
        gdb.execute("\n".join(["define %s" % name, ours] + theirs + ["end"]))
    finally:
        gdb.execute("set confirm %s" % ("on" if confirm else "off"))


gdb.events.stop.connect(_ipbp_stopped)
_ipbp_hook("hook-step", "_ipbp_arm")
_ipbp_hook("hookpost-step", "_ipbp_disarm")
end

"""ipbp for lldb: `step` (and `s`) from unpatched code into a function a patch replaced stops in
its new version. Load it with `command script import target/ipbp/debug/ipbp_lldb.py`.

Why it is needed: when `thread step-in` enters a function, lldb runs to the end of the prologue
of the function at the call's target, which it reads from the executable's module alone. A
patched function's old entry holds a jump to its new version, so that address is never reached
and the program runs on. `ipbp-step` (which `step` and `s` become) arms, for the stepping thread
only, a one-shot breakpoint at the end of the prologue of the newest version of every function
the patches redirect (the newest loaded patch's manifest, `patch-<n>.json` beside
`patch-<n>.so`, lists them all: patches are cumulative), steps in, and deletes them.
"""

import json
import re

import lldb


def _manifest(target):
    # `patch-<n>.so`, or `patch-<n>.<attempt>.so` when an earlier attempt was loaded but not
    # installed; `patch-<n>.json` describes the last attempt.
    newest = None
    for module in target.module_iter():
        path = module.GetFileSpec().fullpath or ""
        found = re.search(r"^(.*)/patch-(\d+)(?:\.\d+)?\.so$", path)
        if found and (newest is None or int(found.group(2)) > newest[0]):
            newest = (int(found.group(2)), "%s/patch-%s.json" % (found.group(1), found.group(2)))
    if newest is None:
        return None
    try:
        with open(newest[1]) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _after_prologue(target, addr):
    function = target.ResolveLoadAddress(addr).GetFunction()
    if function.IsValid():
        return function.GetStartAddress().GetLoadAddress(target) + function.GetPrologueByteSize()
    return addr


def step(debugger, command, result, internal_dict):
    target = debugger.GetSelectedTarget()
    thread = target.GetProcess().GetSelectedThread()
    armed = []
    for install in (_manifest(target) or {}).get("installs", []):
        if install.get("kind") != "detour":
            continue
        try:
            at = _after_prologue(target, int(install["new"], 16))
        except (KeyError, ValueError):
            continue
        bp = target.BreakpointCreateByAddress(at)
        bp.SetThreadID(thread.GetThreadID())
        bp.SetOneShot(True)
        armed.append(bp.GetID())
    stepped = lldb.SBCommandReturnObject()
    debugger.GetCommandInterpreter().HandleCommand("thread step-in " + command, stepped)
    for id in armed:
        target.BreakpointDelete(id)
    result.AppendMessage(stepped.GetOutput() or "")
    if stepped.GetError():
        result.SetError(stepped.GetError())


def __lldb_init_module(debugger, internal_dict):
    debugger.HandleCommand("command script add -f ipbp_lldb.step ipbp-step")
    debugger.HandleCommand("command alias step ipbp-step")
    debugger.HandleCommand("command alias s ipbp-step")

"""Provides run: dumpe2fs or debugfs icheck/ncheck, read-only, bounded (the controller parses).
Fixed commands, integer arguments; the file goes as /dev/fd/N, never as a path to parse."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import time

from .output import WorkerError

TOOLS = {"layout": "dumpe2fs", "icheck": "debugfs", "ncheck": "debugfs"}
MAX_ARGS = 65536
PER_RUN = 8000  # numbers per -R (one argument: 128 KiB at most)
MAX_OUTPUT = 16 << 20
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def run(req: dict) -> dict:
    """output, truncated, status, stderr, timed_out; or missing: the tool's name."""
    cmd, offset, args = req["cmd"], int(req["offset"]), [int(a) for a in req.get("args", ())]
    deadline = time.monotonic() + min(float(req.get("timeout", 60)), 300.0)
    if cmd not in TOOLS or offset < 0 or len(args) > MAX_ARGS or not all(0 <= a < 1 << 64 for a in args):
        raise WorkerError("bad file system request")
    tool = shutil.which(TOOLS[cmd], path=PATH)
    if tool is None:
        return {"missing": TOOLS[cmd]}
    fd = os.open(req["path"], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise WorkerError("%s is neither a file nor a block device" % req["path"])
        device = "/dev/fd/%d?offset=%d" % (fd, offset)
        if cmd == "layout":
            return _bounded([tool, device], fd, deadline)
        out: dict = {"output": ""}
        for start in range(0, max(1, len(args)), PER_RUN):
            line = " ".join([cmd] + ["%d" % a for a in args[start : start + PER_RUN]])
            part = _bounded([tool, "-R", line, device], fd, deadline)
            out.update(part, output=out["output"] + part["output"])
            if part["status"] or part["truncated"] or part["timed_out"]:
                break
        return out
    finally:
        os.close(fd)


def _bounded(argv: "list[str]", fd: int, deadline: float) -> dict:
    """Run argv; read MAX_OUTPUT at most until `deadline`, then kill its group."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(fd,), env={"PATH": PATH, "LC_ALL": "C"}, start_new_session=True)
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    got = {out: bytearray(), err: bytearray()}
    reading, timed_out = [out, err], False
    while reading and len(got[out]) <= MAX_OUTPUT:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for f in select.select(reading, [], [], left)[0]:
            data = os.read(f, 1 << 16)
            if not data:
                reading.remove(f)
            got[f] += data
            del got[err][:-2048]
    if reading:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return {
        "output": bytes(got[out][:MAX_OUTPUT]).decode("utf-8", "backslashreplace"),
        "status": -1 if reading else proc.returncode,
        "stderr": bytes(got[err]).decode("utf-8", "replace"),
        "truncated": len(got[out]) > MAX_OUTPUT,
        "timed_out": timed_out,
    }

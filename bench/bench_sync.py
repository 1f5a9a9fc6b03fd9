#!/usr/bin/env python3
"""Provides the side-by-side benchmark: blocksync-tui against the naive design, rsync and dd.

Builds a random image and a copy with 1% of its 4 KiB pages changed at random, then, over N
interleaved rounds, restores the destination, drops (or evenly warms) the page cache, times each
contender until the destination is on disk, checks the result and counts bytes on the wire.
Prints a Markdown table and saves it with the raw numbers under bench/results/.

    python3 bench/bench_sync.py --size 1G --rounds 3
    python3 bench/bench_sync.py --ssh --ssh-port 2222 --ssh-key KEY --ssh-known-hosts FILE
    python3 bench/bench_sync.py --ssh --other-host [--delay-ms 25] --ours base=/work/baseline
    python3 bench/bench_sync.py --only ours --only ours-cache --only ours-nocache

The "with its cache" rows are a repeat sync: before each of their runs (untimed) a compare of
the pristine destination with itself keeps the destination's digest cache, as the previous
sync would have; the timed sync then reads only the source (and a sample of the destination).
Caches live in a directory of the workdir, removed before every run: ~/.cache is not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blocksync_tui.demo import make_changed_pair

NAIVE = REPO / "bench" / "naive_blocksync.py"
CONTENDER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
"""Python contenders run from compiled bytecode, as a pip install leaves them (run() compiles
first): some sandboxes set PYTHONDONTWRITEBYTECODE, which would add compile time to each run."""


@dataclass
class Context:
    """Everything a contender's command needs: files, sizes and how to reach the ssh host."""

    src: Path
    dst: Path
    workdir: Path
    size: int
    changed: int
    ssh_user: str = "root"
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    ssh_config: str | None = None
    ours_extra: list[str] = field(default_factory=list)
    loopback_divisor: int = 1
    """2 behind the delay proxy, which puts every byte on loopback twice."""
    other_host: bool = False
    """The ssh host looks like another machine (other_host.py): no --no-direct needed."""
    host: object | None = None
    """The OtherHost, which can tell the CPU time of the sshd side."""

    @property
    def report(self) -> Path:
        """Where a contender that writes a JSON report puts it."""
        return self.workdir / "report.json"

    @property
    def ssh_o_options(self) -> list[str]:
        """The `-o` option values every OpenSSH contender gets."""
        options = ["BatchMode=yes"]
        if self.ssh_known_hosts:
            options.append(f"UserKnownHostsFile={self.ssh_known_hosts}")
        return options + self.ssh_options

    @property
    def ssh_args(self) -> list[str]:
        """OpenSSH arguments shared by every ssh contender (without the host)."""
        args = ["-F", self.ssh_config] if self.ssh_config else []
        args += ["-p", str(self.ssh_port), *(["-i", self.ssh_key] if self.ssh_key else [])]
        for option in self.ssh_o_options:
            args += ["-o", option]
        return args

    @property
    def remote(self) -> str:
        """user@host of the ssh contenders."""
        return f"{self.ssh_user}@{self.ssh_host}"

    @property
    def ssh(self) -> str:
        """The ssh command line up to and including the host, shell-quoted."""
        return shlex.join(["ssh", *self.ssh_args, self.remote])


def q(path: Path | str) -> str:
    """Quote a path for the shell."""
    return shlex.quote(str(path))


@dataclass(frozen=True)
class Contender:
    """One row of the table: a shell command and how to learn what it put on the wire."""

    name: str
    role: str
    """What the key ratios call it: "read", "ours", "ours-digests", "ours-direct", "naive",
    "rsync" or "dd"."""
    command: Callable[[Context], str]
    wire: Callable[[Context, str], int | None] = lambda ctx, output: None
    """Bytes on the wire reported by the tool itself, from its output or report."""
    writes: bool = True
    """False for the read limit, which leaves the destination as it was."""
    cwd: Path = REPO
    """Where the command runs: a checkout of blocksync-tui for `python3 -m blocksync_tui`."""
    setup: Callable[[Context], str] | None = None
    """A command run, untimed, after the destination is restored and before the page cache
    is dropped: what the state before the run needs (a digest cache of the destination)."""


def _json_report(ctx: Context) -> dict:
    return json.loads(ctx.report.read_text())


def _ours_wire(ctx: Context, output: str) -> int | None:
    report = _json_report(ctx)
    # Prefer the destination link alone (comparable with the others) if the report has it;
    # `bytes_sent` is chunk data only, without digests and framing.
    for key in ("wire_bytes_destination", "bytes_sent"):
        if key in report:
            return int(report[key])
    return None


def _naive_wire(ctx: Context, output: str) -> int | None:
    return int(_json_report(ctx)["bytes_on_wire"])


def _rsync_wire(ctx: Context, output: str) -> int | None:
    counts = [re.search(rf"Total bytes {word}: ([\d,.]+)", output) for word in ("sent", "received")]
    if not all(counts):
        return None
    return sum(int(re.sub(r"\D", "", m[1])) for m in counts if m)


def _ours(c: Context, destination: str, extra: list[str]) -> str:
    """Our command line; `extra` adds options (--no-direct, ssh keys)."""
    argv = [sys.executable, "-m", "blocksync_tui", "sync", str(c.src), destination]
    return shlex.join([*argv, "--yes", "-q", "--json", str(c.report), *extra, *c.ours_extra])


def _keep_cache(c: Context, destination: str, extra: list[str]) -> str:
    """A compare of the destination with the pristine copy it was restored from: it keeps the
    destination's digests, as a previous sync would have (the repeat sync's starting point)."""
    argv = [sys.executable, "-m", "blocksync_tui", "compare", "--full", "-q", str(c.workdir / "pristine.img")]
    return shlex.join([*argv, destination, *extra, *c.ours_extra])


def _naive(c: Context, ssh: list[str]) -> str:
    argv = [sys.executable, str(NAIVE), str(c.src), str(c.dst), "--json", str(c.report)]
    return shlex.join(argv + ssh)


def _rsync(c: Context, destination: str, ssh: list[str]) -> str:
    argv = ["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats"]
    argv += ["-e", shlex.join(ssh)] if ssh else []
    return shlex.join([*argv, str(c.src), destination])


def local_contenders() -> list[Contender]:
    """The contenders with both files on this machine."""
    return [
        Contender(
            "read limit",
            "read",
            lambda c: f"cat {q(c.src)} >/dev/null & cat {q(c.dst)} >/dev/null; wait",
            writes=False,
        ),
        Contender("blocksync-tui", "ours", lambda c: _ours(c, str(c.dst), []), _ours_wire),
        Contender(
            "blocksync-tui --forget (keeps no digest cache)",
            "ours-nocache",
            lambda c: _ours(c, str(c.dst), ["--forget"]),
            _ours_wire,
        ),
        Contender(
            "blocksync-tui, repeat sync with its cache",
            "ours-cache",
            lambda c: _ours(c, str(c.dst), []),
            _ours_wire,
            setup=lambda c: _keep_cache(c, str(c.dst), []),
        ),
        Contender(
            "blocksync-tui --no-direct (digests)",
            "ours-digests",
            lambda c: _ours(c, str(c.dst), ["--no-direct"]),
            _ours_wire,
        ),
        Contender("naive lockstep", "naive", lambda c: _naive(c, []), _naive_wire),
        Contender("rsync --inplace", "rsync", lambda c: _rsync(c, str(c.dst), []), _rsync_wire),
        Contender(
            "dd",
            "dd",
            lambda c: f"dd if={q(c.src)} of={q(c.dst)} bs=1M conv=notrunc status=none",
            lambda c, out: c.size,
        ),
    ]


def _ssh_flags(c: Context, direct: bool = False) -> list[str]:
    # The ssh host is normally this machine, where the engine would compare directly on the
    # host and send nothing over ssh: --no-direct measures the network path. The other-host
    # sshd shows another boot id, so there the tool takes the network path on its own.
    flags = [] if direct or c.other_host else ["--no-direct"]
    flags += ["-i", c.ssh_key] if c.ssh_key else []
    flags += ["--known-hosts", c.ssh_known_hosts] if c.ssh_known_hosts else []
    flags += ["--ssh-config", c.ssh_config] if c.ssh_config else []
    return flags


def _ours_ssh(c: Context, direct: bool = False, extra: tuple[str, ...] = ()) -> str:
    """Our command line with the destination on the ssh host."""
    return _ours(c, f"{c.remote}:{c.ssh_port}:{c.dst}", [*_ssh_flags(c, direct), *extra])


@dataclass(frozen=True)
class Checkout:
    """A checkout of blocksync-tui to time (`--ours NAME=PATH[:EXTRA ARGS]`)."""

    name: str
    path: Path
    extra: tuple[str, ...] = ()


def parse_checkout(text: str) -> Checkout:
    """NAME=PATH or NAME=PATH:EXTRA ARGS (shell-quoted)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH[:EXTRA ARGS]")
    path, _, extra = rest.partition(":")
    checkout = Path(path).resolve()
    if not (checkout / "blocksync_tui" / "__main__.py").exists():
        raise argparse.ArgumentTypeError(f"{path}: not a blocksync-tui checkout")
    return Checkout(name, checkout, tuple(shlex.split(extra)))


def checkout_contenders(checkouts: list[Checkout], ssh: bool) -> list[Contender]:
    """One row per checkout, run from it; the first has the role "ours", later ones "ours-NAME"."""
    rows = []
    for i, co in enumerate(checkouts):
        label = f"blocksync-tui {co.name}" + (f" {shlex.join(co.extra)}" if co.extra else "")
        if ssh:
            command = lambda c, co=co: _ours_ssh(c, extra=co.extra)  # noqa: E731
        else:
            command = lambda c, co=co: _ours(c, str(c.dst), list(co.extra))  # noqa: E731
        rows.append(Contender(
            label + (" (ssh)" if ssh else ""), "ours" if i == 0 else f"ours-{co.name}", command,
            _ours_wire, cwd=co.path,
        ))
    return rows


def with_checkouts(contenders: list[Contender], checkouts: list[Checkout], ssh: bool) -> list[Contender]:
    """Replace our rows by one per checkout, in their place in the table."""
    if not checkouts:
        return contenders
    ours_roles = ("ours", "ours-digests", "ours-direct", "ours-cache", "ours-nocache")
    at = next(i for i, c in enumerate(contenders) if c.role == "ours")
    rest = [c for c in contenders if c.role not in ours_roles]
    return rest[:at] + checkout_contenders(checkouts, ssh) + rest[at:]


def ssh_contenders(other_host: bool = False) -> list[Contender]:
    """The same contenders with the destination reached over ssh (normally on this machine).

    With `other_host` (other_host.py's sshd, another boot id) the "same host: direct" row is
    left out: the tool cannot see that it is the same machine, which is the point.
    """
    ours = _ours_ssh

    def naive(c: Context) -> str:
        ssh = ["--ssh", c.remote, "-p", str(c.ssh_port)]
        ssh += ["-i", c.ssh_key] if c.ssh_key else []
        for option in c.ssh_o_options:
            ssh += ["-o", option]
        return _naive(c, ssh)

    def dd(c: Context) -> str:
        remote = f"dd of={q(c.dst)} bs=1M iflag=fullblock conv=notrunc status=none"
        return f"dd if={q(c.src)} bs=1M status=none | {c.ssh} {q(remote)}"

    direct = [] if other_host else [
        Contender(
            "blocksync-tui (ssh, same host: direct)",
            "ours-direct",
            lambda c: ours(c, direct=True),
            _ours_wire,
        ),
    ]
    return [
        local_contenders()[0],
        Contender("blocksync-tui (ssh)", "ours", ours, _ours_wire),
        Contender(
            "blocksync-tui (ssh), repeat sync with its cache",
            "ours-cache",
            ours,
            _ours_wire,
            setup=lambda c: _keep_cache(c, f"{c.remote}:{c.ssh_port}:{c.dst}", _ssh_flags(c)),
        ),
        *direct,
        Contender("naive lockstep (ssh)", "naive", naive, _naive_wire),
        Contender(
            "rsync --inplace (ssh)",
            "rsync",
            lambda c: _rsync(c, f"{c.remote}:{c.dst}", ["ssh", *c.ssh_args]),
            _rsync_wire,
        ),
        Contender("dd (ssh)", "dd", dd, lambda c, out: c.size),
    ]


def parse_size(text: str) -> int:
    """Parse "1G", "256M", "64MiB" or a plain byte count."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 256M, 1G)")
    return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))


def drop_caches() -> bool:
    """Write back and drop the page cache; return False if this process may not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def loopback_bytes() -> int | None:
    """Bytes sent on the loopback interface so far, or None where it cannot be read."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[8])  # transmit bytes
    except (OSError, IndexError, ValueError):
        pass
    return None


def files_equal(a: Path, b: Path) -> bool:
    """Compare two files byte for byte."""
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def prepare(ctx: Context, pristine: Path, cold: bool, contender: Contender) -> None:
    """Restore the destination, run the contender's setup, and put the page cache in the same
    state for every contender."""
    subprocess.run(["cp", "--reflink=auto", str(pristine), str(ctx.dst)], check=True)
    ctx.report.unlink(missing_ok=True)
    shutil.rmtree(CONTENDER_ENV["XDG_CACHE_HOME"], ignore_errors=True)  # no cache but its own
    if contender.setup is not None:
        subprocess.run(contender.setup(ctx), shell=True, cwd=contender.cwd, env=CONTENDER_ENV, check=True,
                       stdout=subprocess.DEVNULL)
    if cold:
        drop_caches()
    else:
        for path in (ctx.src, ctx.dst):
            subprocess.run(f"cat {q(path)} >/dev/null", shell=True, check=True)


def run_once(ctx: Context, contender: Contender, measure_loopback: bool) -> dict:
    """Time one contender until its result is on disk; check it and count its bytes."""
    command = contender.command(ctx)
    lo_before = loopback_bytes() if measure_loopback else None
    if ctx.host is not None:
        ctx.host.wait_idle()
        remote_before = ctx.host.remote_cpu()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        command, shell=True, cwd=contender.cwd, env=CONTENDER_ENV, capture_output=True, text=True,
        check=False,
    )
    # dd and rsync leave dirty pages behind; timing until fsync treats every contender alike.
    fd = os.open(ctx.dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lo_after = loopback_bytes() if measure_loopback else None
    result = {
        "command": command,
        "seconds": seconds,
        "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "returncode": proc.returncode,
    }
    if ctx.host is not None:
        ctx.host.wait_idle()
        result["cpu_remote"] = ctx.host.remote_cpu() - remote_before
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        result["error"] = lines[-1] if lines else f"exit status {proc.returncode}"
        return result
    if contender.role.startswith("ours"):
        try:
            result["method"] = _json_report(ctx).get("method")
        except (OSError, ValueError):
            pass
    try:
        result["wire_reported"] = contender.wire(ctx, proc.stdout + proc.stderr)
    except (OSError, ValueError, KeyError) as exc:
        result["wire_reported"] = None
        result["wire_error"] = str(exc)
    if contender.writes and lo_before is not None and lo_after is not None:
        result["wire_loopback"] = (lo_after - lo_before) // ctx.loopback_divisor
    result["correct"] = files_equal(ctx.src, ctx.dst) if contender.writes else None
    return result


def summarize(contender: Contender, runs: list[dict], ssh: bool) -> dict:
    """Reduce the rounds of one contender to one row."""
    failed = [r for r in runs if r["returncode"] != 0]
    if failed:
        reason = f"failed in round {len(runs)}: {failed[0]['error']}"
        return {"name": contender.name, "role": contender.role, "skipped": reason}
    last = runs[-1]
    wire = last.get("wire_loopback") if ssh else None
    methods = sorted({r["method"] for r in runs if r.get("method")})
    return {
        "name": contender.name + (f" [{', '.join(methods)}]" if methods else ""),
        "role": contender.role,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "cpu_remote": statistics.median(r["cpu_remote"] for r in runs)
        if all("cpu_remote" in r for r in runs) else None,
        "wire": wire if wire is not None else last.get("wire_reported"),
        "wire_reported": last.get("wire_reported"),
        "correct": None if last["correct"] is None else all(r["correct"] for r in runs),
        "rounds": len(runs),
    }


def fmt_bytes(n: int | None) -> str:
    """Format a byte count for humans."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def table(rows: list[dict], changed: int, ssh: bool) -> str:
    """Render the rows as a Markdown table; in ssh mode with the tools' own byte counts too."""
    base = next((r["seconds"] for r in rows if r["role"] == "read" and "seconds" in r), None)
    extra = " tool's count |" if ssh else ""
    lines = [
        "| contender | median s | x read limit | CPU s | bytes on the wire | x changed |"
        + extra
        + " correct |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if ssh else "") + "---|",
    ]
    for r in rows:
        if "skipped" in r:
            reason = r["skipped"].replace("|", "\\|")
            lines.append(f"| {r['name']} | skipped: {reason} |" + " |" * (6 if ssh else 5))
            continue
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        wire = r["wire"]
        per_changed = f"{wire / changed:.1f}" if wire is not None and changed else "-"
        reported = f" {fmt_bytes(r['wire_reported'])} |" if ssh else ""
        correct = {None: "n/a", True: "yes", False: "**FAIL**"}[r["correct"]]
        cpu = f"{r['cpu_seconds']:.2f}"
        if r.get("cpu_remote") is not None:
            cpu += f" + {r['cpu_remote']:.2f}"
        lines.append(
            f"| {r['name']} | {r['seconds']:.2f} | {ratio} | {cpu} "
            f"| {fmt_bytes(wire)} | {per_changed} |{reported} {correct} |"
        )
    return "\n".join(lines)


def key_ratios(rows: list[dict], changed: int) -> list[str]:
    """The ratios the design's targets are stated in."""
    seconds = {r["role"]: r["seconds"] for r in rows if "seconds" in r}
    pairs = [
        ("blocksync-tui / read limit", "ours", "read"),
        ("naive / blocksync-tui", "naive", "ours"),
        ("rsync / blocksync-tui", "rsync", "ours"),
        ("dd / blocksync-tui", "dd", "ours"),
    ]
    named = [(r, r[len("ours-"):]) for r in seconds if r.startswith("ours-")]
    fixed = ("ours-digests", "ours-direct", "ours-cache", "ours-nocache")
    named = [(role, label) for role, label in named if role not in fixed]
    labels = (("ours-digests", "--no-direct"), ("ours-direct", "direct"), ("ours-cache", "with its cache"),
              ("ours-nocache", "--forget"))
    for role, label in (*labels, *named):
        if role in seconds:
            if role in ("ours-cache", "ours-nocache"):
                pairs.append((f"blocksync-tui {label} / blocksync-tui", role, "ours"))
            if role not in fixed:
                pairs += [(f"blocksync-tui {label} / blocksync-tui", role, "ours"),
                          (f"rsync / blocksync-tui {label}", "rsync", role)]
            pairs += [
                (f"blocksync-tui {label} / read limit", role, "read"),
                (f"naive / blocksync-tui {label}", "naive", role),
            ]
    out = []
    for label, a, b in pairs:
        value = f"{seconds[a] / seconds[b]:.2f}" if a in seconds and b in seconds else "n/a"
        out.append(f"- time {label}: {value}")
    for r in rows:
        if r.get("wire") is not None and changed:
            out.append(
                f"- bytes on the wire / changed bytes, {r['name']}: {r['wire'] / changed:.2f}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; with --ssh --start-sshd, inside a private sshd's lifetime."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--other-host" in argv:
        return _main_other_host(argv)
    if "--start-sshd" not in argv:
        return _main(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from sshd import SshServer

    with tempfile.TemporaryDirectory(prefix="blocksync-bench-sshd-") as work:
        with SshServer.running(Path(work)) as server:
            return _main([
                *argv, "--ssh-port", str(server.port), "--ssh-user", server.user,
                "--ssh-key", str(server.key), "--ssh-known-hosts", str(server.known_hosts),
            ])


def _main_other_host(argv: list[str]) -> int:
    """Run inside the lifetime of bench/other_host.py's sshd (another boot id, own keys)."""
    from other_host import OtherHost

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--delay-ms", type=float, default=0.0)
    known, _ = pre.parse_known_args(argv)
    # Same cipher for OpenSSH as paramiko negotiates for us (GCM, preferred by engine/ssh.py),
    # unless the command line picks one.
    cipher = [] if any("cipher" in a.lower() for a in argv) else [
        "--ssh-option", "Ciphers=aes128-gcm@openssh.com"]
    with OtherHost.running(delay_ms=known.delay_ms) as host:
        print(f"other host: sshd on port {host.sshd_port}, boot id {host.boot_id}"
              + (f", +{known.delay_ms:g} ms each way via port {host.port}" if host.proxy else ""),
              flush=True)
        # BatchMode and UserKnownHostsFile come from Context; these keep ~/.ssh out of it.
        extra = ["IdentitiesOnly=yes", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes"]
        options = [a for o in extra for a in ("--ssh-option", o)]
        return _main([
            *argv, "--ssh-host", host.host, "--ssh-port", str(host.port),
            "--ssh-user", host.user, "--ssh-key", str(host.key),
            "--ssh-known-hosts", str(host.known_hosts), "--ssh-config", str(host.ssh_config),
            *options, *cipher, *(["--loopback-divisor", "2"] if host.proxy else []),
        ], host)


def _main(argv: list[str], host: object | None = None) -> int:
    """Run the benchmark; return the exit status (1 if a contender produced a wrong result)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="image size (default 1G)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--change-fraction", type=float, default=0.01, help="fraction of 4 KiB pages changed"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to put the images (default: a temp dir in /tmp)"
    )
    parser.add_argument(
        "--results", type=Path, default=REPO / "bench" / "results", help="output directory"
    )
    parser.add_argument(
        "--warm", action="store_true", help="warm caches even if they could be dropped"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="ROLE",
        choices=["ours", "ours-digests", "ours-direct", "ours-cache", "ours-nocache", "naive", "rsync", "dd"],
        help="run only these contenders besides the read limit (repeatable)",
    )
    parser.add_argument(
        "--ours-extra", default="", help="extra arguments for blocksync-tui, shell-quoted"
    )
    parser.add_argument(
        "--ours", action="append", type=parse_checkout, default=[], metavar="NAME=PATH[:ARGS]",
        help="time blocksync-tui from this checkout, with these extra sync arguments, instead of "
        "our default rows (repeatable: the first is 'ours' in the ratios)",
    )
    ssh = parser.add_argument_group(
        "ssh mode: the destination on an ssh host (normally this machine)"
    )
    ssh.add_argument("--ssh", action="store_true", help="run the ssh contenders")
    ssh.add_argument(
        "--start-sshd", action="store_true",
        help="with --ssh: start a private sshd on 127.0.0.1 (tests/sshd.py) and use it",
    )
    ssh.add_argument("--ssh-host", default="127.0.0.1")
    ssh.add_argument("--ssh-port", type=int, default=22)
    ssh.add_argument("--ssh-user", default="root")
    ssh.add_argument("--ssh-key", help="private key file")
    ssh.add_argument("--ssh-known-hosts", help="known_hosts file holding the host's key")
    ssh.add_argument(
        "--ssh-option", action="append", default=[], metavar="OPT", help="extra ssh -o option"
    )
    ssh.add_argument("--ssh-config", help="ssh_config for OpenSSH (-F) and for blocksync-tui")
    ssh.add_argument(
        "--other-host", action="store_true",
        help="with --ssh: start bench/other_host.py's sshd (another boot id, so the tool takes "
        "the network path without --no-direct) and use it",
    )
    ssh.add_argument(
        "--delay-ms", type=float, default=0.0,
        help="with --other-host: add this latency each way (delay_proxy.py in front of sshd)",
    )
    ssh.add_argument("--loopback-divisor", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if (args.other_host or args.delay_ms) and not args.ssh:
        parser.error("--other-host and --delay-ms need --ssh")
    if args.delay_ms and not args.other_host:
        parser.error("--delay-ms needs --other-host (the proxy sits in front of its sshd)")
    if args.other_host and args.start_sshd:
        parser.error("--other-host and --start-sshd each start an sshd: pick one")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="blocksync-bench-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(args, workdir, host)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir)
    return 1 if any(r.get("correct") is False for r in rows) else 0


def run(args: argparse.Namespace, workdir: Path, host: object | None = None) -> list[dict]:
    """Build the pair, run every contender for every round, print and save the results."""
    src, dst, pristine = workdir / "src.img", workdir / "dst.img", workdir / "pristine.img"
    started = time.perf_counter()
    changed = make_changed_pair(src, pristine, args.size, args.change_fraction)
    print(
        f"pair: {fmt_bytes(args.size)}, {fmt_bytes(changed)} changed in {workdir} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    ctx = Context(
        src,
        dst,
        workdir,
        args.size,
        changed,
        ssh_user=args.ssh_user,
        ssh_host=args.ssh_host,
        ssh_port=args.ssh_port,
        ssh_key=args.ssh_key,
        ssh_known_hosts=args.ssh_known_hosts,
        ssh_options=args.ssh_option,
        ssh_config=args.ssh_config,
        ours_extra=shlex.split(args.ours_extra),
        loopback_divisor=args.loopback_divisor,
        other_host=args.other_host,
        host=host,
    )
    packages = [str(co.path / "blocksync_tui") for co in args.ours] or [str(REPO / "blocksync_tui")]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *packages, str(NAIVE)],
        env=CONTENDER_ENV, check=True, stdout=subprocess.DEVNULL,
    )
    # Digest caches of the runs stay in the workdir, never in ~/.cache.
    CONTENDER_ENV["XDG_CACHE_HOME"] = str(workdir / "xdg-cache")
    cold = not args.warm and drop_caches()
    cache = (
        "cold cache (dropped before every run)"
        if cold
        else "warm cache (both files read before every run)"
    )
    print(cache)

    contenders = ssh_contenders(args.other_host) if args.ssh else local_contenders()
    contenders = with_checkouts(contenders, args.ours, args.ssh)
    if args.only:
        contenders = [
            c for c in contenders
            if c.role == "read" or c.role in args.only or (c.role.startswith("ours-")
                                                           and "ours" in args.only)
        ]
    runs: dict[str, list[dict]] = {c.name: [] for c in contenders}
    for round_no in range(1, args.rounds + 1):
        for contender in contenders:
            history = runs[contender.name]
            if history and history[-1]["returncode"] != 0:
                continue  # failed before: skip it, the table says why
            prepare(ctx, pristine, cold, contender)
            result = run_once(ctx, contender, measure_loopback=args.ssh)
            history.append(result)
            status = "failed" if result["returncode"] else f"{result['seconds']:.2f} s"
            print(f"round {round_no}: {contender.name}: {status}", flush=True)

    rows = [summarize(c, runs[c.name], args.ssh) for c in contenders]
    where = f"ssh to {args.ssh_host}" if args.ssh else "local"
    if args.other_host:
        where += " (other_host.py sshd: own boot id" + (
            f", +{args.delay_ms:g} ms each way" if args.delay_ms else "") + ")"
    if args.ssh:
        ciphers = [o for o in args.ssh_option if "cipher" in o.lower()]
        where += f", OpenSSH {ciphers[0] if ciphers else 'default cipher'}"
    header = (
        f"{where}, {fmt_bytes(args.size)} image, "
        f"{fmt_bytes(changed)} changed ({args.change_fraction:.1%} of 4 KiB pages), "
        f"{cache}, median of {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    footer = [
        "",
        "Bytes on the wire: loopback interface counter, TCP/IP and SSH overhead included; other",
        "loopback traffic during a run inflates it. Tool's count: what the tool itself reports.",
        "CPU s: local processes (ssh client, our controller and source worker); with",
        "--other-host \"+ N\" adds the sshd side (sshd, remote shell, dd, rsync or worker).",
    ]
    footer = footer if args.ssh else []
    markdown = "\n".join(
        [header, "", table(rows, changed, args.ssh), *footer, "", *key_ratios(rows, changed)]
    )
    print("\n" + markdown)

    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{time.strftime('%Y%m%d-%H%M%S')}-{'ssh' if args.ssh else 'local'}"
    stem.with_suffix(".md").write_text(markdown + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "size": args.size,
                "changed": changed,
                "cold": cold,
                "ssh": args.ssh,
                "rows": rows,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nsaved {stem}.md and .json")
    return rows


if __name__ == "__main__":
    sys.exit(main())

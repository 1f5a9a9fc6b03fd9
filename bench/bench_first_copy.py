#!/usr/bin/env python3
"""Provides the first-copy benchmark: a migration's initial copy to another host, side by side.

The destination does not exist before each run, so a tool must send everything: this is the
case where `dd | ssh dd` is the natural competitor. The "other host" is bench/other_host.py's
sshd, whose sessions see another boot id, so blocksync-tui takes its network path ("digests")
as it would to a real second machine (the table shows the method each run reported).

Contenders, in interleaved rounds (the order rotates each round), cold cache before every run:
- `dd if=SRC bs=4M | ssh -c CIPHER host 'dd of=DST bs=4M iflag=fullblock conv=fsync'`, with the
  cipher paramiko negotiates for the tool (aes128-gcm@openssh.com: AEAD, so no separate MAC);
- blocksync-tui from one or more checkouts (`--ours NAME=PATH[:EXTRA ARGS]`, repeatable), each
  run as `python3 -m blocksync_tui sync SRC user@127.0.0.1:PORT:DST` with PATH as its cwd.

With --pull the source is the other host's and the destination this one's: `ssh host dd | dd`
against `blocksync-tui sync user@127.0.0.1:PORT:SRC DST`.

With --third the copy is driven from this machine between two other hosts (two such sshds, each
with its own boot id and host key), every byte relayed by the controller: `ssh A dd | ssh B dd`
against `blocksync-tui sync A:SRC B:DST`.

Data sets: random data (incompressible) and an image with 30% zeros in runs of 1-12 MiB
between runs of random data (written out: a dense file, as a disk read from a device is).

    python3 bench/bench_first_copy.py --ours base=/work/baseline --ours new=/work/main
    python3 bench/bench_first_copy.py --size 256M --delay-ms 25 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench_sync import (  # noqa: E402
    CONTENDER_ENV,
    Checkout,
    drop_caches,
    files_equal,
    fmt_bytes,
    loopback_bytes,
    parse_checkout,
    parse_size,
)
from other_host import OtherHost  # noqa: E402

MiB = 1 << 20
CIPHER = "aes128-gcm@openssh.com"
"""What paramiko ends up with against this sshd: the tool puts GCM first (engine/ssh.py)."""


def write_random(path: Path, size: int, seed: int) -> int:
    """Random, incompressible data; return the number of zero bytes (none to speak of)."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 4 * MiB)
            out.write(rng.randbytes(n))
            left -= n
    return 0


def write_zeros(path: Path, size: int, seed: int, fraction: float) -> int:
    """Random data with zero runs of 1-12 MiB (4 KiB aligned) making up `fraction` of it."""
    rng = random.Random(seed)
    target = int(size * fraction) // 4096 * 4096
    zero_runs: list[int] = []
    while sum(zero_runs) < target:
        zero_runs.append(min(rng.randrange(MiB, 12 * MiB + 1, 4096), target - sum(zero_runs)))
    # The data between them: cut the rest at random 4 KiB boundaries into len+1 runs.
    data = size - sum(zero_runs)
    cuts = sorted(rng.randrange(0, data // 4096 + 1) * 4096 for _ in zero_runs)
    data_runs = [b - a for a, b in zip([0, *cuts], [*cuts, data])]
    with open(path, "wb") as out:
        for i, n in enumerate(data_runs):
            _write(out, n, rng)
            if i < len(zero_runs):
                _write(out, zero_runs[i], None)
    return sum(zero_runs)


def _write(out, n: int, rng: random.Random | None) -> None:
    """Write n random bytes (or zeros when rng is None), written out, never as a hole."""
    while n:
        m = min(n, 4 * MiB)
        out.write(rng.randbytes(m) if rng else bytes(m))
        n -= m


# -- running


@dataclass
class Contender:
    name: str
    kind: str  # "dd" or "ours"
    ours: Checkout | None = None


class Both:
    """Two other hosts, the source's and the destination's, for a copy this machine drives
    between them (--third): what run_once asks of a host, asked of both."""

    def __init__(self, near: OtherHost, far: OtherHost, workdir: Path) -> None:
        self.near, self.far = near, far
        self.proxy = near.proxy or far.proxy
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(near.known_hosts.read_text() + far.known_hosts.read_text())

    def wait_idle(self) -> None:
        self.near.wait_idle()
        self.far.wait_idle()

    def log_size(self) -> tuple[int, int]:
        return self.near.log_size(), self.far.log_size()

    def negotiated(self, since: tuple[int, int]) -> list[str]:
        return sorted(set(self.near.negotiated(since[0])) | set(self.far.negotiated(since[1])))

    def remote_cpu(self) -> float:
        return self.near.remote_cpu() + self.far.remote_cpu()

    def cli_args(self) -> list[str]:
        return ["-i", str(self.near.key), "-i", str(self.far.key), "--known-hosts", str(self.known_hosts)]


def command(c: Contender, host: OtherHost | Both, src: Path, dst: Path, report: Path, bs: str,
            cipher: str, pull: bool = False) -> tuple[str | list[str], Path]:
    """The command line of a contender and its working directory; with `pull`, the source is
    on the other host and the destination here; with two hosts (`Both`), one each."""
    if isinstance(host, Both):
        if c.kind == "dd":
            read = shlex.join(host.near.ssh_argv(f"dd if={shlex.quote(str(src))} bs={bs} status=none", cipher=cipher))
            write = shlex.join(host.far.ssh_argv(
                f"dd of={shlex.quote(str(dst))} bs={bs} iflag=fullblock conv=fsync status=none", cipher=cipher))
            return f"{read} | {write}", REPO
        assert c.ours is not None
        argv = [sys.executable, "-m", "blocksync_tui", "sync", host.near.endpoint(src), host.far.endpoint(dst),
                "--yes", "-q", "--json", str(report), *host.cli_args(), *c.ours.extra]
        return argv, c.ours.path
    if c.kind == "dd" and pull:
        ssh = shlex.join(host.ssh_argv(f"dd if={shlex.quote(str(src))} bs={bs} status=none", cipher=cipher))
        return f"{ssh} | dd of={shlex.quote(str(dst))} bs={bs} iflag=fullblock conv=fsync status=none", REPO
    if c.kind == "dd":
        remote = f"dd of={shlex.quote(str(dst))} bs={bs} iflag=fullblock conv=fsync status=none"
        ssh = shlex.join(host.ssh_argv(remote, cipher=cipher))
        return f"dd if={shlex.quote(str(src))} bs={bs} status=none | {ssh}", REPO
    assert c.ours is not None
    ends = [host.endpoint(src), str(dst)] if pull else [str(src), host.endpoint(dst)]
    argv = [sys.executable, "-m", "blocksync_tui", "sync", *ends,
            "--yes", "-q", "--json", str(report), *host.cli_args(), *c.ours.extra]
    return argv, c.ours.path


def run_once(c: Contender, host: OtherHost | Both, src: Path, dst: Path, workdir: Path, args) -> dict:
    """Remove the destination, drop caches, time one run to disk, then check and count it."""
    report = workdir / "report.json"
    dst.unlink(missing_ok=True)
    report.unlink(missing_ok=True)
    cold = not args.warm and drop_caches()
    if not cold:
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
    cmd, cwd = command(c, host, src, dst, report, args.bs, args.cipher, args.pull)
    host.wait_idle()
    log_at, remote_before = host.log_size(), host.remote_cpu()
    lo_before = loopback_bytes()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=cwd, env=CONTENDER_ENV,
                          capture_output=True, text=True, check=False)
    if dst.exists():  # the tool fsyncs and dd has conv=fsync: this only makes sure
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lo_after = loopback_bytes()
    host.wait_idle()
    result: dict = {
        "command": cmd if isinstance(cmd, str) else shlex.join(cmd),
        "cwd": str(cwd),
        "seconds": seconds,
        "cpu_local": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "cpu_remote": host.remote_cpu() - remote_before,
        "returncode": proc.returncode,
        "cold": cold,
        "negotiated": host.negotiated(log_at),
    }
    if lo_before is not None and lo_after is not None:
        # Through the delay proxy every byte crosses loopback twice (client-proxy, proxy-sshd).
        result["wire_loopback"] = (lo_after - lo_before) // (2 if host.proxy else 1)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        result["error"] = lines[-1] if lines else f"exit status {proc.returncode}"
        result["correct"] = False
        return result
    if c.kind == "ours" and report.exists():
        data = json.loads(report.read_text())
        result.update(method=data.get("method"), wire_reported=data.get("wire_bytes"),
                      bytes_sent=data.get("bytes_sent"), compression=data.get("compression"),
                      algorithm=data.get("algorithm"), tool_seconds=data.get("seconds"))
    result["allocated"] = os.stat(dst).st_blocks * 512 if dst.exists() else None
    result["correct"] = dst.exists() and files_equal(src, dst)
    return result


def summarize(name: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if r["returncode"] == 0]
    row: dict = {"name": name, "rounds": len(runs), "failed": len(runs) - len(ok)}
    if not ok:
        row["error"] = runs[-1].get("error", "failed") if runs else "not run"
        return row
    med = lambda key: statistics.median(r[key] for r in ok)  # noqa: E731
    row.update(
        seconds=med("seconds"), all_seconds=[round(r["seconds"], 2) for r in runs],
        cpu_local=med("cpu_local"), cpu_remote=med("cpu_remote"),
        wire=ok[-1].get("wire_loopback"), wire_reported=ok[-1].get("wire_reported"),
        allocated=ok[-1].get("allocated"), method=ok[-1].get("method", "-"),
        negotiated=", ".join(sorted({n for r in ok for n in r["negotiated"]})) or "-",
        correct=all(r["correct"] for r in runs),
    )
    return row


def table(rows: list[dict], reference: str) -> str:
    base = next((r.get("seconds") for r in rows if r["name"] == reference), None)
    lines = [
        f"| contender | median s | rounds s | x {reference.replace('|', chr(92) + '|')} | local CPU s | remote CPU s "
        "| bytes on loopback | tool's wire_bytes (both links) | dest allocated | method | cipher | correct |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['name'].replace('|', chr(92) + '|')} | failed: {r['error']} |" + " |" * 10)
            continue
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        correct = "yes" if r["correct"] else "**FAIL**"
        lines.append(
            f"| {r['name'].replace('|', chr(92) + '|')} | {r['seconds']:.2f} | {' / '.join(map(str, r['all_seconds']))} "
            f"| {ratio} | {r['cpu_local']:.2f} | {r['cpu_remote']:.2f} | {fmt_bytes(r['wire'])} "
            f"| {fmt_bytes(r['wire_reported'])} | {fmt_bytes(r['allocated'])} | {r['method']} "
            f"| {r['negotiated']} | {correct} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any destination differs from its source."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="image size (1G)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--data", action="append", choices=["random", "zeros"],
                        help="data sets to run (repeatable; default both)")
    parser.add_argument("--zero-fraction", type=float, default=0.30,
                        help="share of zeros in the 'zeros' image (default 0.30)")
    parser.add_argument("--ours", action="append", type=parse_checkout, metavar="NAME=PATH[:ARGS]",
                        help="a checkout to time, with extra sync arguments (repeatable; "
                        "default: this checkout as 'ours')")
    parser.add_argument("--no-dd", action="store_true", help="leave out dd | ssh dd")
    parser.add_argument("--bs", default="4M", help="dd block size (default 4M)")
    parser.add_argument("--cipher", default=CIPHER, help=f"OpenSSH cipher for dd (default {CIPHER})")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="latency to add each way (a delaying proxy in front of the sshd)")
    parser.add_argument("--warm", action="store_true", help="warm cache instead of dropping it")
    parser.add_argument("--third", action="store_true",
                        help="driven from here between two other hosts (`ssh A dd | ssh B dd` for dd)")
    parser.add_argument("--pull", action="store_true",
                        help="pull: the source on the other host, the destination here "
                        "(`ssh host dd | dd` for dd)")
    parser.add_argument("--workdir", type=Path, help="where the images go (default: temp in /tmp)")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ours = args.ours or [Checkout("ours", REPO)]
    if len({o.name for o in ours}) != len(ours):
        parser.error("--ours names must differ")
    dd_name = "ssh A dd | ssh B dd" if args.third else "ssh dd | dd" if args.pull else "dd | ssh dd"
    contenders = ([] if args.no_dd else [Contender(dd_name, "dd")]) + [
        Contender(f"blocksync-tui {o.name}" + (f" {shlex.join(o.extra)}" if o.extra else ""),
                  "ours", o)
        for o in ours
    ]
    reference = contenders[0].name
    datasets = args.data or ["random", "zeros"]

    for o in ours:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(o.path / "blocksync_tui")],
                       env=CONTENDER_ENV, check=True, stdout=subprocess.DEVNULL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="blocksync-first-copy-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, Path] = {}
    zero_bytes: dict[str, int] = {}
    for name in datasets:
        sources[name] = workdir / f"src-{name}.img"
        started = time.perf_counter()
        if name == "random":
            zero_bytes[name] = write_random(sources[name], args.size, args.seed)
        else:
            zero_bytes[name] = write_zeros(sources[name], args.size, args.seed, args.zero_fraction)
        print(f"{name}: {fmt_bytes(args.size)}, {zero_bytes[name] / args.size:.1%} zeros "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    dst = workdir / "dst.img"

    runs: dict[str, dict[str, list[dict]]] = {d: {c.name: [] for c in contenders} for d in datasets}
    failures = 0
    try:
        with OtherHost.running(delay_ms=args.delay_ms) as near, \
                (OtherHost.running(delay_ms=args.delay_ms) if args.third else contextlib.nullcontext()) as far:
            for other in (near, far) if far else (near,):
                print(f"other host: sshd on port {other.sshd_port}, boot id {other.boot_id}"
                      + (f", +{args.delay_ms:g} ms each way via port {other.port}" if other.proxy else ""),
                      flush=True)
            host = Both(near, far, workdir) if far else near
            for round_no in range(args.rounds):
                for name in datasets:
                    shift = round_no % len(contenders)
                    for c in contenders[shift:] + contenders[:shift]:
                        r = run_once(c, host, sources[name], dst, workdir, args)
                        runs[name][c.name].append(r)
                        status = f"{r['seconds']:.2f} s" if r["returncode"] == 0 else \
                            f"FAILED: {r.get('error')}"
                        if r["returncode"] == 0 and not r["correct"]:
                            status += "  **DESTINATION DIFFERS FROM SOURCE**"
                            failures += 1
                        print(f"round {round_no + 1} {name}: {c.name}: {status} "
                              f"{r.get('method', '')}", flush=True)
    finally:
        dst.unlink(missing_ok=True)
        if args.workdir is None:
            for path in sources.values():
                path.unlink(missing_ok=True)
            (workdir / "report.json").unlink(missing_ok=True)
            (workdir / "known_hosts").unlink(missing_ok=True)
            os.rmdir(workdir)

    link = f"+{args.delay_ms:g} ms each way (proxy)" if args.delay_ms else "loopback"
    parts = [
        (f"First copy between two other hosts, driven from this one (two other_host.py sshds on 127.0.0.1, {link}), "
         if args.third else
         f"First copy {'from' if args.pull else 'to'} another host (other_host.py sshd on 127.0.0.1, own boot id, {link}), ")
        +
        f"{fmt_bytes(args.size)}, destination absent before each run, "
        f"{'warm' if args.warm else 'cold'} cache, median of {args.rounds} interleaved rounds, "
        f"{os.cpu_count()} CPUs, dd bs={args.bs}, ssh -c {args.cipher}",
        "",
    ]
    summary: dict[str, list[dict]] = {}
    for name in datasets:
        rows = [summarize(c.name, runs[name][c.name]) for c in contenders]
        summary[name] = rows
        parts += [f"### {name} ({zero_bytes[name] / args.size:.1%} zeros)", "",
                  table(rows, reference), ""]
        base = rows[0].get("seconds")
        for r in rows[1:]:
            if base and "seconds" in r:
                parts.append(f"- {r['name']} / {reference}: {r['seconds'] / base:.2f}")
        parts.append("")
    parts += [
        "Time: start to exit with the destination fsynced. Local CPU: user+system of the",
        "processes started here (ssh client and dd, or the controller and its local worker).",
        "Remote CPU: the sshd side (sshd, shell, remote dd or the remote worker).",
        "Bytes on loopback: transmit counter of lo, both directions, TCP/IP/SSH included",
        "(halved behind the proxy, which carries every byte twice). Tool's wire_bytes: from its",
        "JSON report, the source's link (a local pipe here) and the destination's together.",
        "Dest allocated: st_blocks of the destination afterwards.",
    ]
    markdown = "\n".join(parts)
    print("\n" + markdown)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{time.strftime('%Y%m%d-%H%M%S')}-first-copy"
    stem.with_suffix(".md").write_text(markdown + "\n")
    stem.with_suffix(".json").write_text(json.dumps(
        {"size": args.size, "delay_ms": args.delay_ms, "cipher": args.cipher,
         "zero_bytes": zero_bytes, "rows": summary, "runs": runs}, indent=2) + "\n")
    print(f"\nsaved {stem}.md and .json")
    bad = failures + sum(1 for rows in summary.values() for r in rows if r.get("correct") is False)
    if bad:
        print("\n*** FAIL: a destination differed from its source (see 'correct') ***")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

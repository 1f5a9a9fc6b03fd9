#!/usr/bin/env python3
"""Provides the raw SSH throughput benchmark: our SshTransport (paramiko) against OpenSSH's `ssh`.

Moves SIZE bytes up (client -> remote `cat > /dev/null`) and down (remote `cat FILE` -> client)
through (a) the OpenSSH client with `-c aes128-gcm@openssh.com` and (b) SshTransport's channel
(paramiko, tuned as the engine uses it), in interleaved rounds, and prints median MB/s, client
CPU seconds per GiB and the paramiko/OpenSSH ratio. The remote side prints a line before it
starts `cat`, and the clock starts when the client sees it, so connection setup and the login
shell's start-up are left out on both sides. The worker's own protocol (HASH/DELTA) is measured
by bench_sync.py.

    python3 bench/bench_ssh_throughput.py --size 512M --rounds 5
    python3 bench/bench_ssh_throughput.py --host 10.0.0.2 --user me --key ~/.ssh/id_ed25519

Without --host it starts a private sshd on 127.0.0.1 (tests/sshd.py), so client, sshd and `cat`
share this machine's cores: a real remote host would take sshd and `cat` off them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from blocksync_tui.cli import parse_size
from blocksync_tui.demo import RandomStream
from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.ssh import SshTransport

CIPHER = "aes128-gcm@openssh.com"
BLOCK = 1 << 20
READY = b"ready\n"


@dataclass
class Target:
    """Where to connect, and the file to download (it must exist there)."""

    host: str
    port: int
    user: str
    key: str | None
    known_hosts: str | None
    config: str | None
    remote_file: str

    def ssh_argv(self, command: str) -> list[str]:
        argv = ["ssh", "-c", CIPHER, "-p", str(self.port), "-o", "BatchMode=yes"]
        if self.config:
            argv += ["-F", self.config]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return [*argv, f"{self.user}@{self.host}", command]

    def options(self) -> SshOptions:
        return SshOptions(
            identity_files=[self.key] if self.key else [],
            config_file=self.config,
            known_hosts=self.known_hosts,
        )


class _CommandTransport(SshTransport):
    """SshTransport running a plain command instead of the worker."""

    def __init__(self, target: Target, command: str) -> None:
        super().__init__(Endpoint(path="-", host=target.host, user=target.user, port=target.port),
                         target.options())
        self.command = command

    def remote_command(self) -> str:
        return self.command


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _up_command(ready_fd: int = 1) -> str:
    return f"echo ready >&{ready_fd}; exec cat > /dev/null"


def _down_command(target: Target, size: int, ready_fd: int = 1) -> str:
    return f"echo ready >&{ready_fd}; exec head -c {size} {shlex.quote(target.remote_file)}"


def _openssh(argv: list[str], stdin, stdout) -> tuple[float, float]:
    """Run ssh with its data on files (no relay through us); time from the remote's "ready"."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    cpu = _child_cpu()
    for line in proc.stderr:  # type: ignore[union-attr]
        if line == READY:
            break
    start = time.perf_counter()
    status = proc.wait()
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed with status {status}")
    return elapsed, _child_cpu() - cpu


def openssh_up(target: Target, source: Path) -> tuple[float, float]:
    # ssh reads a page-cached file itself, as `ssh host 'cat > /dev/null' < file` would.
    with open(source, "rb") as data:
        return _openssh(target.ssh_argv(_up_command(2)), data, subprocess.DEVNULL)


def openssh_down(target: Target, size: int) -> tuple[float, float]:
    return _openssh(target.ssh_argv(_down_command(target, size, 2)), subprocess.DEVNULL,
                    subprocess.DEVNULL)


def paramiko_up(target: Target, data: bytes) -> tuple[float, float]:
    transport = _CommandTransport(target, _up_command())
    transport.start()
    try:
        assert transport.recv(len(READY)) == READY
        cpu, start = _self_cpu(), time.perf_counter()
        view = memoryview(data)
        for pos in range(0, len(view), BLOCK):
            transport.send(view[pos : pos + BLOCK])
        transport.close()  # EOF, then waits for `cat` to exit
        elapsed, cpu = time.perf_counter() - start, _self_cpu() - cpu
        status = transport.exit_status(5)
    finally:
        transport.close()
    if status != 0:
        raise RuntimeError(f"paramiko upload failed (exit {status})")
    return elapsed, cpu


def paramiko_down(target: Target, size: int) -> tuple[float, float]:
    transport = _CommandTransport(target, _down_command(target, size))
    transport.start()
    try:
        assert transport.recv(len(READY)) == READY
        cpu, start, got = _self_cpu(), time.perf_counter(), 0
        while data := transport.recv(BLOCK):
            got += len(data)
        elapsed, cpu = time.perf_counter() - start, _self_cpu() - cpu
    finally:
        transport.close()
    if got != size:
        raise RuntimeError(f"paramiko download failed ({got} of {size} bytes)")
    return elapsed, cpu


def run(target: Target, size: int, rounds: int, workdir: Path) -> dict[str, list[tuple[float, float]]]:
    """Every contender once per round, in turn, so that drift hits them all alike."""
    data = RandomStream(7).read(size)
    source = workdir / "up.bin"
    source.write_bytes(data)  # in the page cache from here on
    contenders: dict[str, Callable[[], tuple[float, float]]] = {
        "OpenSSH up": lambda: openssh_up(target, source),
        "paramiko up": lambda: paramiko_up(target, data),
        "OpenSSH down": lambda: openssh_down(target, size),
        "paramiko down": lambda: paramiko_down(target, size),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for number in range(rounds):
        for name, contender in contenders.items():
            elapsed, cpu = contender()
            results[name].append((elapsed, cpu))
            print(f"round {number + 1} {name:14} {size / elapsed / 1e6:7.0f} MB/s", file=sys.stderr)
    return results


def _runs(summary: dict) -> str:
    return "/".join(f"{rate:.0f}" for rate in summary["runs"])


def table(results: dict[str, list[tuple[float, float]]], size: int) -> tuple[str, dict]:
    """A Markdown table of medians, and the numbers behind it."""
    summary: dict = {}
    for name, runs in results.items():
        rates = [size / t / 1e6 for t, _ in runs]
        cpu = statistics.median(c for _, c in runs) * (1 << 30) / size
        summary[name] = {"mb_s": statistics.median(rates), "runs": rates, "cpu_s_per_gib": cpu}
    lines = ["| direction | OpenSSH MB/s | paramiko MB/s | ratio | client CPU s/GiB (ssh / ours) |",
             "|---|---|---|---|---|"]
    for way in ("up", "down"):
        ours, theirs = summary[f"paramiko {way}"], summary[f"OpenSSH {way}"]
        ratio = ours["mb_s"] / theirs["mb_s"]
        summary[f"ratio {way}"] = ratio
        lines.append(
            f"| {way} | **{theirs['mb_s']:.0f}** ({_runs(theirs)}) | **{ours['mb_s']:.0f}** "
            f"({_runs(ours)}) | {ratio:.2f}x | {theirs['cpu_s_per_gib']:.2f} / "
            f"{ours['cpu_s_per_gib']:.2f} |"
        )
    return "\n".join(lines), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=512 << 20, help="bytes per transfer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host", help="an existing SSH server (default: start a private sshd)")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--user", default=os.environ.get("USER", "root"))
    parser.add_argument("--key", help="private key file")
    parser.add_argument("--known-hosts", help="known_hosts file")
    parser.add_argument("--remote-file", help="a file of at least SIZE bytes on the host to download")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        if args.host:
            if not args.remote_file:
                parser.error("--remote-file is needed with --host")
            target = Target(args.host, args.port, args.user, args.key, args.known_hosts, None,
                            args.remote_file)
            return report(target, args.size, args.rounds, Path(tmp))
        from sshd import SshServer

        local_file = Path(tmp) / "down.bin"
        local_file.write_bytes(RandomStream(8).read(args.size))  # in the page cache from here on
        with SshServer.running(Path(tmp) / "sshd") as server:
            target = Target(server.host, server.port, server.user, str(server.key),
                            str(server.known_hosts), str(server.ssh_config), str(local_file))
            return report(target, args.size, args.rounds, Path(tmp))


def report(target: Target, size: int, rounds: int, workdir: Path) -> int:
    results = run(target, size, rounds, workdir)
    text, summary = table(results, size)
    print(f"\n{size / 2**20:.0f} MiB per transfer, {rounds} interleaved rounds, median "
          f"(all runs), cipher {CIPHER} on both; ratio = paramiko / OpenSSH\n")
    print(text)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ssh_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"size": size, "rounds": rounds, "results": summary}, indent=2))
    print(f"\nsaved {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

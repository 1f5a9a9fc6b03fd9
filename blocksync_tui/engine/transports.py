"""Provides SshOptions and transport_factory: the right transport for each endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

from blocksync_tui.endpoint import Endpoint
from blocksync_tui.engine.transport import LocalTransport, Transport


@dataclass
class SshOptions:
    """How to reach remote endpoints. Secrets are never stored here: keys are paths."""

    identity_files: list[str] = field(default_factory=list)
    """Private key files to offer, in addition to ~/.ssh/config's and the agent's."""
    config_file: str | None = None
    """ssh_config to read; None means ~/.ssh/config if it exists."""
    known_hosts: str | None = None
    """The one known_hosts file to check host keys against and save new ones to. None means
    ssh_config's UserKnownHostsFile and GlobalKnownHostsFile (by default ~/.ssh/known_hosts,
    ~/.ssh/known_hosts2, /etc/ssh/ssh_known_hosts, /etc/ssh/ssh_known_hosts2)."""
    accept_new_host_key: bool = False
    """Trust and remember a key for a host that known_hosts does not list (never a changed key).
    True wins over ssh_config's StrictHostKeyChecking; False leaves it to ssh_config."""
    python: str = "python3"
    """The interpreter to start on remote hosts."""
    sudo: bool = False
    """Run remote workers under `sudo -n`."""
    connect_timeout: float | None = None
    """Seconds for each step of connecting; None means ssh_config's ConnectTimeout, else 15."""


def transport_factory(ssh: SshOptions | None = None):
    """A function that makes the transport for an endpoint: local pipes or SSH."""
    ssh = ssh or SshOptions()

    def make(endpoint: Endpoint) -> Transport:
        if not endpoint.is_remote:
            return LocalTransport()
        from blocksync_tui.engine.ssh import SshTransport  # paramiko loads only when needed

        return SshTransport(endpoint, ssh)

    return make

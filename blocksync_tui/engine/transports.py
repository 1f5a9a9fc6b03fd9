"""Provides the transport factories: the right transport for each endpoint.

`local_only` is the default (workers on this machine); `transport_factory(ssh)` adds SSH, and
imports paramiko only when it is asked for a remote endpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.transport import LocalTransport, Transport

TransportFactory = Callable[[Endpoint], Transport]
"""Makes the transport that starts the worker for one endpoint."""


def local_only(endpoint: Endpoint) -> Transport:
    """The default transport factory: workers on this machine."""
    if endpoint.is_remote:
        raise UsageError(f"{endpoint}: remote endpoints need an SSH transport")
    return LocalTransport()


def transport_factory(ssh: SshOptions | None = None) -> TransportFactory:
    """A function that makes the transport for an endpoint: local pipes or SSH."""
    ssh = ssh or SshOptions()

    def make(endpoint: Endpoint) -> Transport:
        if not endpoint.is_remote:
            return LocalTransport()
        from blocksync_tui.engine.ssh import SshTransport  # paramiko loads only when needed

        return SshTransport(endpoint, ssh)

    return make

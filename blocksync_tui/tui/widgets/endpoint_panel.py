"""Provides EndpointPanel: one side's host, path and key, with a browser of that host's devices."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, Static

from blocksync_tui.engine.endpoint import Endpoint
from blocksync_tui.engine.errors import UsageError
from blocksync_tui.engine.host_session import HostSession
from blocksync_tui.engine.inventory import Device
from blocksync_tui.engine.options import SshOptions
from blocksync_tui.engine.transports import transport_factory
from blocksync_tui.engine.units import human_bytes
from blocksync_tui.tui.widgets.path_suggester import PathSuggester


class EndpointPanel(Vertical):
    """Where one end of the sync lives: this machine or an SSH host, and a file or device path."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "ctrl+r",
            "refresh_devices",
            "Devices",
            id="refresh-devices",
            tooltip="List the block devices of this side's host",
        ),
    ]

    class DevicesWanted(Message):
        """The panel wants its host's devices listed, by its host's session."""

        def __init__(self, panel: EndpointPanel, session: HostSession) -> None:
            super().__init__()
            self.panel = panel
            self.session = session

    def __init__(
        self, side: str, title: str, endpoint: str = "", key: str = "", *, list_devices: bool = True,
        ssh: SshOptions | None = None,
    ) -> None:
        """Create a panel.

        Args:
            side: "source" or "destination".
            title: The panel's border title.
            endpoint: An initial endpoint ("/path" or "user@host:/path").
            key: An initial private key file.
            list_devices: List the host's devices as soon as the panel is mounted.
            ssh: How to reach a remote host (the key field's file is offered first).
        """
        super().__init__(id=side, classes="endpoint-panel")
        self.list_on_mount = list_devices
        self.side = side
        """"source" or "destination"."""
        self.border_title = title
        parsed = Endpoint.parse(endpoint) if endpoint else Endpoint("")
        self._initial_host = _host_text(parsed)
        self._initial_path = parsed.path
        self._initial_key = key
        self.devices: list[Device] = []
        """The devices listed for the current host."""
        self._listed_host = self._initial_host
        """The host whose devices the table shows (or is to show)."""
        self._error_for: tuple[str, str, str] | None = None
        self._ssh = ssh or SshOptions()
        self._session: HostSession | None = None
        self._session_for: tuple[str, str] = ("", "")
        """The host and key fields `_session` was made for."""

    def compose(self) -> ComposeResult:
        fields = [
            ("Host", "host", self._initial_host, "this machine  (or user@host:port)"),
            ("Key", "key", self._initial_key, "SSH key file (optional: agent, ~/.ssh/config)"),
            ("Path", "path", self._initial_path, "/dev/sdX or /path/to/image.img"),
        ]
        for label, name, value, placeholder in fields:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                # Paths complete as they are typed (→ takes it): the key file's on this
                # machine, the path's on the panel's host.
                suggester = None
                if name in ("path", "key"):
                    suggester = PathSuggester(self.remote_session if name == "path" else lambda: None)
                yield Input(value, placeholder=placeholder, id=f"{self.side}-{name}", suggester=suggester)
        yield Static("", id=f"{self.side}-error", classes="field-error", markup=False)
        with Horizontal(classes="devices-bar"):
            yield Label("Block devices", classes="devices-title")
            yield Button("List devices", id=f"{self.side}-list", compact=True)
        table: DataTable[str] = DataTable(
            id=f"{self.side}-devices", cursor_type="row", zebra_stripes=True
        )
        table.add_columns("device", "size", "in use", "model")  # in use before the long model names
        yield table

    def on_mount(self) -> None:
        if self.list_on_mount:
            self.action_refresh_devices()

    def on_unmount(self) -> None:
        self._drop_session()

    # -- values

    @property
    def host(self) -> str:
        """The host field ("" for this machine)."""
        return self.query_one(f"#{self.side}-host", Input).value.strip()

    @property
    def path(self) -> str:
        """The path field."""
        return self.query_one(f"#{self.side}-path", Input).value.strip()

    @property
    def key(self) -> str:
        """The key file field."""
        return self.query_one(f"#{self.side}-key", Input).value.strip()

    def endpoint_text(self) -> str:
        """The endpoint in CLI syntax.

        Raises:
            UsageError: the path is empty or the host field cannot be parsed.
        """
        path, host = self.path, self.host
        if not path:
            raise UsageError("enter a path: a block device (pick one below) or an image file")
        if ":" in path and not path.startswith("/"):
            Endpoint.parse(path)  # the whole endpoint typed into the path field
            return path
        if not host:
            return path
        endpoint = Endpoint.parse(f"{host}:{path}")
        if not endpoint.is_remote:
            raise UsageError(f"{host!r} is not a host (user@host or user@host:port)")
        return str(endpoint)

    def show_error(self, text: str) -> None:
        """Show a validation error beside the fields (empty text clears it); it stays until a
        field is changed."""
        error = self.query_one(f"#{self.side}-error", Static)
        error.update(text)
        error.set_class(bool(text), "-visible")
        self.set_class(bool(text), "-invalid")
        self._error_for = self._fields() if text else None

    def _fields(self) -> tuple[str, str, str]:
        return self.host, self.key, self.path

    # -- the host's session

    def session(self) -> HostSession:
        """The worker session of the host and key the fields name: made when first asked
        for, kept until either field changes (its worker starts with its first request).

        Raises:
            UsageError: the host field is not a host.
        """
        wanted = (self.host, self.key)
        if self._session is None or self._session_for != wanted:
            self._drop_session()
            host, key = wanted
            endpoint = Endpoint.parse(f"{host}:/" if host else "/")
            if host and not endpoint.is_remote:
                raise UsageError(f"{host!r} is not a host (user@host or user@host:port)")
            ssh = replace(self._ssh, identity_files=[key, *self._ssh.identity_files]) if key else self._ssh
            self._session, self._session_for = HostSession(endpoint, transport_factory(ssh)), wanted
        return self._session

    def remote_session(self) -> HostSession | None:
        """The session of a remote host the fields name, for path completion; None for this
        machine or a host field that is not a host (asked maybe before the fields exist)."""
        hosts = self.query(f"#{self.side}-host").results(Input)
        if not any(field.value.strip() for field in hosts):
            return None
        try:
            return self.session()
        except UsageError:
            return None

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- devices

    def action_refresh_devices(self) -> None:
        """Ask for this host's devices (the app lists them in a thread)."""
        self.query_one(f"#{self.side}-devices", DataTable).loading = True
        self._listed_host = self.host
        self.query_one(".devices-title", Label).update(
            f"Block devices of {self.host}" if self.host else "Block devices")
        try:
            session = self.session()
        except UsageError as exc:
            self.show_devices([], str(exc))
            return
        self.post_message(self.DevicesWanted(self, session))

    def show_devices(self, devices: list[Device], error: str = "") -> None:
        """Fill the device table."""
        table = self.query_one(f"#{self.side}-devices", DataTable)
        table.loading = False
        table.clear()
        self.devices = devices
        if error:
            self.show_error(error)
            return
        for device in devices:
            for entry, branch in [(device, ""), *((p, "└ ") for p in device.partitions)]:
                use = ", ".join(entry.mounted or entry.holders) or ("partitions in use" if entry.in_use else "")
                if entry.readonly:
                    use = (use + ", read-only").lstrip(", ")
                cells = (branch + entry.path, human_bytes(entry.size), use, entry.model)
                # As text: a path, a mount point or a model name is never markup.
                table.add_row(*map(Text, cells), key=entry.path)

    @on(Button.Pressed)
    def _list_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == f"{self.side}-list":
            event.stop()
            self.action_refresh_devices()

    @on(Input.Submitted)
    def _host_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == f"{self.side}-host":
            event.stop()
            self.action_refresh_devices()

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if self._error_for is not None and self._fields() != self._error_for:
            self.show_error("")  # it was about what the field said before
        if event.input.id == f"{self.side}-host" and self.host != self._listed_host:
            # Another host's devices are not this one's: never show them under its name.
            self.query_one(f"#{self.side}-devices", DataTable).clear()
            self.devices = []
        if self._session is not None and self._session_for != (self.host, self.key):
            self._drop_session()  # and with it what its host's directories held

    @on(Input.Blurred)
    def _host_left(self, event: Input.Blurred) -> None:
        if event.input.id == f"{self.side}-host" and self.host != self._listed_host:
            self.action_refresh_devices()

    @on(DataTable.RowSelected)
    def _device_picked(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if not event.row_key.value:
            return
        self.query_one(f"#{self.side}-path", Input).value = event.row_key.value
        entries = [entry for d in self.devices for entry in (d, *d.partitions)]
        picked = next((e for e in entries if e.path == event.row_key.value), None)
        if self.side == "destination" and picked is not None and picked.in_use:
            use = ", ".join(picked.mounted or picked.holders) or "its partitions"
            self.show_error(f"⚠ {picked.path} is in use ({use}): a sync to it is refused "
                            "while it is; pick another device or unmount it first")
        else:
            self.show_error("")


def _host_text(endpoint: Endpoint) -> str:
    if not endpoint.is_remote:
        return ""
    return str(Endpoint("", endpoint.host, endpoint.user, endpoint.port))[:-1]

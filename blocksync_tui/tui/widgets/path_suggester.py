"""Provides PathSuggester: completes a path field from the directories of the panel's host."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable

from textual.suggester import Suggester

from blocksync_tui.engine.errors import BlocksyncError, ProtocolError, RemoteError
from blocksync_tui.engine.host_session import HostSession
from blocksync_tui.engine.listing import Listing, completion

DEBOUNCE = 0.15
"""Seconds a remote path must stay as typed before its directory is asked for: keys typed
faster than this cost no request."""
MAX_FOLDERS = 64
"""Directories whose listings a host's cache keeps, the most recently used."""


class PathSuggester(Suggester):
    """Suggests the first entry of the typed path's directory that starts with its last part
    (a directory with a trailing "/", so that completion goes on into it); dot-files only when
    that part starts with a dot.

    `remote()` names the host session of the field's panel, or None for this machine. This
    machine's directories are read as they are typed; a remote host's come from its session's
    worker, one request per directory (see `RemoteDirectories`), in a thread, after a pause in
    typing. A suggestion is never shown for another host than the one it was asked of.
    """

    def __init__(self, remote: Callable[[], HostSession | None] = lambda: None) -> None:
        super().__init__(use_cache=False, case_sensitive=True)  # directories change
        self._remote = remote
        self._directories: RemoteDirectories | None = None
        self._asked = 0
        """Counts the values asked for: a pause that ends with a newer one asks nothing."""

    @property
    def directories(self) -> RemoteDirectories | None:
        """The cache of the host last asked about (None before any remote path)."""
        return self._directories

    async def get_suggestion(self, value: str) -> str | None:
        """The completed path, or None."""
        if not value.startswith(("/", "~", ".")):
            return None
        folder, stem = os.path.split(value)
        session = self._remote()
        if session is None:
            found = _local_completion(folder, stem)
        else:
            found = await self._remote_completion(session, folder, stem)
        if found is None:
            return None
        name, is_dir = found
        return os.path.join(folder, name) + ("/" if is_dir else "")

    async def _remote_completion(self, session: HostSession, folder: str, stem: str) -> tuple[str, bool] | None:
        self._asked += 1
        asked = self._asked
        if self._directories is None or self._directories.session is not session:
            self._directories = RemoteDirectories(session)  # another host: nothing of the last one
        directories = self._directories
        listing = directories.cached(folder or ".", stem)
        if listing is None:
            await asyncio.sleep(DEBOUNCE)
            if asked != self._asked:
                return None  # typed on: the newer value asks
            listing = await directories.fetch(folder or ".", stem)
        if listing is None or self._remote() is not session:
            return None  # the panel names another host now
        return listing.completion(stem)


class RemoteDirectories:
    """The listings a host's worker gave, per directory: typing on in one directory costs no
    more requests. A request already on its way is awaited, not sent again."""

    def __init__(self, session: HostSession) -> None:
        self.session = session
        self._listings: OrderedDict[str, list[Listing]] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[Listing | None]] = {}

    def cached(self, folder: str, stem: str) -> Listing | None:
        """A listing of `folder` that says what completes `stem`, if one was received."""
        listings = self._listings.get(folder, [])
        if listings:
            self._listings.move_to_end(folder)
        return next((listing for listing in listings if listing.covers(stem)), None)

    async def fetch(self, folder: str, stem: str) -> Listing | None:
        """A listing that completes `stem`: the whole directory first (dot-files only for a
        dotted stem), so that any other name typed there is answered from it; in a directory
        of more entries than a listing holds, then the entries that start with `stem`.
        None if the worker cannot be reached."""
        listing = self.cached(folder, stem) or await self._ask(folder, "." if stem.startswith(".") else "")
        if listing is not None and not listing.covers(stem):
            listing = await self._ask(folder, stem)
        return listing

    async def _ask(self, folder: str, prefix: str) -> Listing | None:
        key = (folder, prefix)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._request(folder, prefix))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: a field that stops waiting (unmounted) does not cancel another's request.
        return await asyncio.shield(pending)

    async def _request(self, folder: str, prefix: str) -> Listing | None:
        try:
            listing = await asyncio.to_thread(self.session.listing, folder, prefix)
        except (RemoteError, ProtocolError):
            # Missing, not a directory, permission denied (or an answer we refuse): nothing to
            # suggest there, and no need to ask again while this host is named.
            listing = Listing(prefix, (), complete=True)
        except BlocksyncError:
            return None  # no worker there (it did not start, or went away): nothing is kept
        self._listings.setdefault(folder, []).append(listing)
        self._listings.move_to_end(folder)
        while len(self._listings) > MAX_FOLDERS:
            self._listings.popitem(last=False)
        return listing


def _local_completion(folder: str, stem: str) -> tuple[str, bool] | None:
    """What completes `stem` in a directory of this machine."""
    try:
        with os.scandir(os.path.expanduser(folder or ".")) as entries:
            names = sorted((e.name, e.is_dir()) for e in entries if e.name.startswith(stem))
    except OSError:
        return None
    return completion(stem, names)

"""Provides the loader that the bootstrap stub runs first: it reads the worker's modules from
stdin, installs them as the package `blocksync_worker`, and starts the request loop.

It runs as a script, not as a module of the package: the stub execs it with LOADER (its own
bytes) in its globals. Anything wrong with what arrived ends the process with one line on
stderr and EXIT_BAD_PAYLOAD, before a byte of stdout is written.

What it reads after itself: "<length>\n", then that many bytes of zlib-compressed bundle, where
the bundle is, for each module, "<name> <length>\n" and that many bytes of its source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zlib

PACKAGE = "blocksync_worker"
EXIT_BAD_PAYLOAD = 95
"""The exit status when the payload is truncated or corrupted (the stub's own is 96)."""


def parse_bundle(bundle: bytes) -> "dict[str, bytes]":
    """The modules of a bundle, by name.

    Raises:
        ValueError: the bundle is not a well-formed list of modules.
    """
    sources = {}
    pos = 0
    while pos < len(bundle):
        end = bundle.find(b"\n", pos)
        if end < 0:
            raise ValueError("module header without an end at byte %d" % pos)
        name, length = bundle[pos:end].decode("ascii").split(" ")
        if not name.isidentifier() or name in sources:
            raise ValueError("bad module name %r" % name)
        source = bundle[end + 1 : end + 1 + int(length)]
        if len(source) != int(length):
            raise ValueError("module %s is truncated" % name)
        sources[name] = source
        pos = end + 1 + int(length)
    if "__init__" not in sources:
        raise ValueError("no package module")
    return sources


def read_payload(stream, loader: bytes) -> "tuple[dict[str, bytes], str]":
    """Read the bundle that follows the loader; return its modules and the sha256 of the whole
    payload as it was sent (the loader's length line, the loader, the bundle's line, the bundle).

    Raises:
        ValueError: a short read, a bad length line, or a bundle that does not decompress.
    """
    line = stream.readline()
    length = int(line)
    packed = stream.read(length)
    if len(packed) != length:
        raise ValueError("payload truncated: %d of %d bytes" % (len(packed), length))
    try:
        bundle = zlib.decompress(packed)
    except zlib.error as exc:
        raise ValueError("payload corrupted (%s)" % exc)
    digest = hashlib.sha256(b"%d\n" % len(loader) + loader + line + packed).hexdigest()
    return parse_bundle(bundle), digest


class BundleFinder:
    """A meta-path finder and loader of the modules of one package, from their sources in
    memory; each is compiled under its own file name, so tracebacks name it (and show its lines:
    linecache asks get_source)."""

    def __init__(self, package: str, sources: "dict[str, bytes]") -> None:
        self.package = package
        self.sources = sources

    def _module_name(self, fullname: str) -> "str | None":
        if fullname == self.package:
            return "__init__"
        prefix = self.package + "."
        if fullname.startswith(prefix) and fullname[len(prefix) :] in self.sources:
            return fullname[len(prefix) :]
        return None

    def filename(self, fullname: str) -> str:
        """The file name a module's code carries: "blocksync_worker/scan.py"."""
        return "%s/%s.py" % (self.package, self._module_name(fullname))

    def find_spec(self, fullname: str, path=None, target=None):
        """A spec for the package and its modules; None for any other name."""
        name = self._module_name(fullname)
        if name is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, origin=self.filename(fullname), is_package=name == "__init__"
        )

    def create_module(self, spec) -> None:
        """The default module object."""
        return None

    def exec_module(self, module) -> None:
        """Run a module's source in it."""
        fullname = module.__name__
        module.__file__ = self.filename(fullname)
        code = compile(self.sources[self._module_name(fullname)], module.__file__, "exec")
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        """The source of a module, for tracebacks."""
        return self.sources[self._module_name(fullname)].decode()


def main(loader: bytes) -> None:
    """Install the package from stdin and serve; one line and EXIT_BAD_PAYLOAD if it is bad."""
    try:
        sources, digest = read_payload(sys.stdin.buffer, loader)
        sys.meta_path.insert(0, BundleFinder(PACKAGE, sources))
        serve = importlib.import_module(PACKAGE + ".serve")
    except Exception as exc:
        sys.stderr.write("blocksync worker: cannot load the worker: %s: %s\n" % (type(exc).__name__, exc))
        sys.stderr.flush()
        sys.exit(EXIT_BAD_PAYLOAD)
    serve.main(digest)


if __name__ == "__blocksync_loader__":
    main(LOADER)  # noqa: F821  (set by the bootstrap stub)

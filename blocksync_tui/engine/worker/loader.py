"""Provides the loader the bootstrap stub execs (LOADER: its own bytes), shipped uncompressed.

It reads "<length>\n" and a zlib bundle of "<name> <length>\n<source>" modules, installs them as
the package `blocksync_worker` and serves; anything wrong: one line, EXIT_BAD_PAYLOAD.
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
    """The modules of a bundle, by name; ValueError if it is malformed."""
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
    """The bundle's modules and the sha256 of the whole payload as sent; ValueError if short or bad."""
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
    """Finds and loads one package's modules from memory, each under its own file name (tracebacks
    show their lines through get_source)."""

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
        name = self._module_name(fullname)
        if name is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, origin=self.filename(fullname), is_package=name == "__init__"
        )

    def create_module(self, spec) -> None:
        return None

    def exec_module(self, module) -> None:
        fullname = module.__name__
        module.__file__ = self.filename(fullname)
        code = compile(self.sources[self._module_name(fullname)], module.__file__, "exec")
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self.sources[self._module_name(fullname)].decode()


def main(loader: bytes) -> None:
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

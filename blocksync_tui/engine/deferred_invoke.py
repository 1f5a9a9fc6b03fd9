"""Defers paramiko's import of `invoke` until ssh_config's `Match exec` runs a command.

paramiko.config imports invoke at its own import, for `Match exec` alone; invoke brings yaml,
unittest.mock and more with it: 0.12 s of the 0.25 s that importing paramiko takes on this
machine, at the start of every SSH run. Importing this module first puts a stand-in for invoke
in sys.modules that imports the real one on its first attribute access. (The standard library's
LazyLoader does not do here: `import invoke` itself reads the module's `__spec__`, which loads it.)
Where invoke is not installed, nothing changes: paramiko keeps its ImportError and raises it on a
`Match exec`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

NAME = "invoke"


class StandIn(types.ModuleType):
    """A module that becomes the real one the first time anything but its spec is read."""

    def __getattr__(self, attribute: str):  # called only for what the stand-in lacks
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def defer(name: str = NAME) -> None:
    """Stand in for `name` until it is used, unless it is loaded already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = StandIn(name)
    stand_in.__spec__ = spec  # what `import name` checks (spec._initializing) before returning it
    sys.modules[name] = stand_in


defer()

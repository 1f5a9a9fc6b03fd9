"""Provides function: a libc call the os module lacks (fallocate, sync_file_range), via ctypes.

Looked up once per name; None where there is none (not Linux, or a Python without ctypes), and
the caller then does without it.
"""

from __future__ import annotations

import os

_found: "dict[str, object]" = {}


def function(name: str, argtypes: "list[str]"):
    """libc's `name`, taking ctypes types named by `argtypes` ("c_int", "c_int64", ...) and
    returning an int; raises OSError(errno) when it returns -1. None if libc has no `name`."""
    if name not in _found:
        _found[name] = _lookup(name, argtypes)
    return _found[name]


def _lookup(name: str, argtypes: "list[str]"):
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        raw = getattr(libc, name)
        raw.argtypes = [getattr(ctypes, argtype) for argtype in argtypes]
        raw.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None

    def call(*args) -> int:
        result = raw(*args)
        if result == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    return call

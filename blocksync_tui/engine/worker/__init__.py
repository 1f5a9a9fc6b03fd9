"""Provides the blocksync worker: the only code that opens files and devices.

Every module of this package except `loader` is shipped as source, at the start of each run,
to the host that holds a file or device (over a pipe locally, over an SSH channel remotely),
where the loader installs them as the package `blocksync_worker` and runs them under any Python
3.8 or newer. Nothing is installed there, so every shipped module must import only the standard
library and its siblings, relatively (`from . import protocol`), never `blocksync_tui`; the
optional accelerators xxhash, zstandard and lz4 are imported inside functions, under try. A
test holds every module to that.

The modules, one job each: `protocol` the wire format (the only module the controller imports),
`devices` what the host says of its block devices, `opening` OPEN and its safety checks,
`scan` the reading requests, `writer` the writing ones, `output` frames to stdout, `serve` the
request loop. This file must stay free of imports: the controller runs it too.
"""

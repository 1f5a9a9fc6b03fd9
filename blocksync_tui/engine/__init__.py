"""Provides the engine: everything that compares and syncs, with no user interface in it.

What it promises to the layers above it (the app in `blocksync_tui.tui`, the command line in
`blocksync_tui.cli`), and what `tests/test_layering.py` checks:

- Its API: `api.Engine`, the one protocol that both `sync.SyncEngine` (in this process) and
  `process.EngineProcess` (in a child process) satisfy: prepare, run, pause, resume, cancel,
  progress, report, close, and a `chunk_map` read through `chunkmap.ChunkView`. Beside it, the
  values a UI needs: `endpoint.Endpoint`, `options.SshOptions` and `sync.SyncOptions`,
  `report.Progress` and `report.Report`, `chunkmap.State`, `inventory.list_devices`, the
  exceptions of `errors`, and the formatting of sizes, rates and durations in `units`.
- It imports nothing from above: no `tui`, no `cli`, no `progress`, and no Textual at all.
- paramiko loads only when a remote endpoint is reached (`transports.transport_factory` imports
  `ssh` on first use); a local-only run never imports it.
- Workers: `worker` is the only code that runs on an endpoint's host. It is stdlib-only and
  shipped there as source by `bootstrap` (nothing is installed remotely); no other module of
  this package ever leaves the controller.
"""

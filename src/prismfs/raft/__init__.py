"""Raft consensus: a pure core and the durable log it is persisted to.

The core modules (`core`, `log`, `progress`, `quorum`, `messages`) import
no trio, socket, time or os (a test enforces it): time arrives as ``tick()``
calls, randomness as a seeded ``random.Random``, I/O as the `Ready` batches
the driver carries out. `durable_log` is the blocking file I/O the driver
runs in a worker thread.
"""

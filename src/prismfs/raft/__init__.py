"""Raft consensus: a pure core (`core`) and its data structures.

Nothing in this package imports trio, socket, time or os (a test enforces
it): time arrives as ``tick()`` calls, randomness as a seeded
``random.Random``, I/O as the `Ready` batches the driver carries out.
"""

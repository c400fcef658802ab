"""The storage-node daemon: configuration, data directory, logs and the run loop."""

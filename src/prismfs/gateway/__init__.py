"""The HTTP API (``/v1``) that every node with ``[http] listen`` serves."""

"""Command-line front ends: ``prismfs`` (admin, dev cluster, files) and ``mount.prismfs``."""

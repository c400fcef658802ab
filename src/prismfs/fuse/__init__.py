"""The FUSE client: `mount.prismfs` serving a mount through pyfuse3."""

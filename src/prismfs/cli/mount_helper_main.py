"""``python -m prismfs.cli.mount_helper_main``: `mount.prismfs` without the console script."""

from prismfs.cli.mount_helper import main

main()

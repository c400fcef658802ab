"""``python -m prismfs`` is the ``prismfs`` command."""

from prismfs.cli.main import main

main()

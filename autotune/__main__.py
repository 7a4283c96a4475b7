"""``python -m autotune``: the same entry point as the ``autotune`` command."""

from autotune.cli import main

main()

"""``python -m autotune.cli``: the command line, as the console script runs it."""

from autotune.cli import main

main()

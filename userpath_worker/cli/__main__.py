"""``python -m userpath_worker.cli``: the ``userpath`` command, for processes the CLI starts itself."""

from userpath_worker.cli import main

main()

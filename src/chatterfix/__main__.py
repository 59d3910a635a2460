"""``python -m chatterfix`` runs the command line."""

from chatterfix.cli import main

main()

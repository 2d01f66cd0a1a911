"""``python -m scanflow`` runs the CLI."""

from scanflow.cli import main

main()

"""``python -m omnivae`` runs the command line."""

from omnivae.cli import entry_point

entry_point()

"""``python -m omnivae.cli`` runs the command line, as ``python -m omnivae`` does."""

from omnivae.cli import entry_point

entry_point()

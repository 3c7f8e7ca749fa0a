"""``python -m omnivae.cli`` runs the command line, as ``python -m omnivae`` does."""

from omnivae.cli import entry_point

if __name__ == "__main__":  # imported by pytest --doctest-modules, it must not run
    entry_point()

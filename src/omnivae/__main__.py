"""``python -m omnivae`` runs the command line."""

from omnivae.cli import entry_point

if __name__ == "__main__":  # imported by pytest --doctest-modules, it must not run
    entry_point()

"""Worked examples that reproduce figures of the papers (one command each)."""

"""The commands: train, evaluate, predict, export (``scripts/`` and the console entry points)."""

"""``python -m sheetbridge``: the same commands as ``sheetbridge``."""

from sheetbridge.cli import app

app()

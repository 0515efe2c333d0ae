"""``python -m polyrec``: the same command line as ``polyrec``."""
from polyrec.cli import app

app(prog_name="polyrec")

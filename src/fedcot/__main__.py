"""``python -m fedcot`` runs the command line."""

from fedcot.cli import app

app()

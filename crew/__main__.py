"""`python -m crew`."""

from crew.cli.main import run

run()

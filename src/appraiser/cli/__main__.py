"""`python -m appraiser.cli`: the same command as the `appraiser` script (tests, benchmarks)."""

from appraiser.cli import app

app()

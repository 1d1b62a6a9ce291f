"""`python -m appraiser.cli`: the same command as the `appraiser` script (tests, benchmarks)."""

from appraiser.cli import app

if __name__ == "__main__":  # importing the module (as a walk over the package does) runs nothing
    app()

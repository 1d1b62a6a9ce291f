"""What a test needs from the machine rather than the virtualenv (a browser, Java, podman, a
PostgreSQL server): where it is missing the test is skipped with one line naming what is missing
and how to install it, except under CI (CI=true), where a skip would hide an untested feature and
the test fails instead. `.ci/run` installs all of them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when running under CI (env CI=true, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(what: str, install: str) -> NoReturn:
    """Skip (fail under CI) because `what` is missing; `install` says how to get it."""
    message = f"{what}: {install}"
    if in_ci():
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)

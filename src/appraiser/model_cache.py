"""The registered models' files on this machine, readable without MLflow.

`registry.load_version` downloads a version once into APPRAISER_HOME/cache/vN; every later load of
that version reads it from there. The champion's version is kept in the store too (the
`promotions` history, written with every move of the alias: champion.py), so a command that only
scores a file (`appraiser predict`) can find (champion.current) and load the champion without
importing MLflow and opening the tracking store, seconds of start-up for a pure function of the
files.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from appraiser.config import settings

PRICER_ARTIFACT = "pricer"  # the pyfunc artifact that holds the native model files
# cached versions kept: the newest (the champion, usually) and the ones a rollback would want
KEEP_VERSIONS = 3
PARTIAL_HOURS = 1.0  # a half-finished download older than this was left by a process that died

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """Something the user can fix about the registry (no champion yet, unknown version...)."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be read (server down, store broken): never taken as "no champion"."""


def root() -> Path:
    return settings().home.resolve() / "cache"


def folder(version: str) -> Path:
    return root() / f"v{version}"


def is_complete(version: str) -> bool:
    """A finished download (published with one rename, so never half a copy)."""
    return (folder(version) / "MLmodel").exists()


def prune(loaded: str, keep: int = KEEP_VERSIONS, *, also: Sequence[str] = ()) -> list[str]:
    """Remove the cached versions but `loaded`, `also` (the champion) and the `keep` newest, and
    downloads left half-way by a process that died; returns the versions removed. Each version
    is a few MB of files; on Cloud Run the cache lives on the in-memory disk. A server still
    loading a removed version fails that load and its watcher downloads it again at its next
    check."""
    base = root()
    cached = sorted(
        (p for p in base.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
        key=lambda p: int(p.name[1:]),
        reverse=True,
    )
    kept = {p.name for p in cached[:keep]} | {f"v{v}" for v in (loaded, *also)}
    removed = []
    for path in cached:
        if path.name not in kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name[1:])
    stale = time.time() - PARTIAL_HOURS * 3600
    for partial in base.glob("v*.partial-*"):
        with suppress(OSError):
            if partial.stat().st_mtime < stale:
                shutil.rmtree(partial, ignore_errors=True)
    if removed:
        log.info("removed cached model versions %s", ", ".join(removed))
    return removed


def pricer_folder(version: str) -> Path:
    """The PriceModel's folder inside the cached pyfunc: the one artifact folder holding a saved
    PriceModel (found without importing YAML, a fiftieth of `appraiser predict`'s start-up), or
    where the MLmodel file says when there is not exactly one."""
    from appraiser.models import PriceModel

    cached = folder(version)
    found = list((cached / "artifacts").glob(f"*/{PriceModel.FILE}"))
    if len(found) == 1:
        return found[0].parent
    return _pricer_folder_by_mlmodel(cached)


def _pricer_folder_by_mlmodel(cached: Path) -> Path:
    import yaml

    spec = yaml.safe_load((cached / "MLmodel").read_text())
    return cached / spec["flavors"]["python_function"]["artifacts"][PRICER_ARTIFACT]["path"]

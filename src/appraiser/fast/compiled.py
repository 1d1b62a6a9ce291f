"""The model's LightGBM forests compiled to machine code for this machine (lleaves), for speed.

LightGBM walks its trees one stone at a time through a generic interpreter; lleaves compiles the
same trees with LLVM into a function that returns the same values (to about 1e-15 in log price:
only the order of the additions differs) about five times faster, one stone or a million
(benchmarks/serving_parts.py). Explanations (TreeSHAP) stay with LightGBM; every price, range
and deal check uses the compiled trees once they are ready.

Compiled code is specific to a CPU, so it never travels with a model: it lives in this machine's
model cache (`APPRAISER_HOME/cache/native`), named by a hash of the trees, the CPU, the compiler's
version and its options. Compiling runs in a child process (LLVM keeps memory until its process
ends, and lleaves' code generation holds the GIL), one at a time per forest across processes (a
file lock). What is loaded is exactly what was compiled (its SHA-256, a file owned by this user
and writable by no one else) and must give LightGBM's answers on the model's reference stones and
on stones at the edges of what it accepts, so a damaged or stale file can cost speed but never a
price; a forest whose compiled code disagrees is marked and never compiled again. Any failure
leaves LightGBM in place. `APPRAISER_NATIVE_TREES=false` turns all of it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appraiser import model_cache
from appraiser.config import settings
from appraiser.fast import probe as probes
from appraiser.models import Accelerated

if TYPE_CHECKING:
    from appraiser.models import PriceModel

logger = logging.getLogger(__name__)

# Compile time and memory grow with the leaves: 600 trees of 15 leaves (9,000) compile in 5-7
# s here (benchmarks/serving_parts.py); a review reported a 300-tree forest of 255 leaves
# taking 49 s and 560 MB. Larger forests stay with LightGBM.
MAX_LEAVES = 30_000
COMPILE_SECONDS = 900  # a compile that takes longer is abandoned (LightGBM keeps the forest)
RETRY_SECONDS = 3600  # after the compiler failed on a forest, LightGBM for this long
# the compiler's options, in the cache key: code compiled one way is never loaded another way
OPTIONS: dict[str, Any] = {"finline": False, "fblocksize": 34, "fcodemodel": "large"}


@dataclass
class Forest:
    """One LightGBM booster of a model and the object that predicts with it (`native`)."""

    holder: Any  # a LightGBMMember or an AdaptiveRange: both have .booster and .accelerated
    role: str  # for the logs: "lightgbm", "spread"...

    @property
    def booster(self) -> Any:
        return self.holder.booster

    @property
    def compiled(self) -> bool:
        fast = self.holder.accelerated
        return fast is not None and fast.compiled is not None


def enabled() -> bool:
    if not settings().native_trees:
        return False
    try:  # not installable everywhere (llvmlite wheels lag new Pythons): then LightGBM
        import lleaves  # noqa: F401
    except ImportError:
        return False
    return True


def forests(model: PriceModel) -> list[Forest]:
    """The model's LightGBM boosters: its LightGBM members and its range's spread model."""
    from appraiser.models import LightGBMMember

    found = [Forest(m, m.kind) for m in model.members if isinstance(m, LightGBMMember)]
    if model.ranges is not None and model.ranges.booster is not None:
        found.append(Forest(model.ranges, "spread"))
    return [f for f in found if f.booster is not None]


def probe_set(model: PriceModel) -> np.ndarray:
    """The model's probe stones (fast/probe.py), its forests' thresholds read from their text."""
    return probes.for_model(model, [_model_text(f.booster) for f in forests(model)])


def folder() -> Path:
    return model_cache.root() / "native"


def _model_text(booster: Any) -> str:
    """The booster as LightGBM text, with an objective line: a model trained with a custom
    objective (models.near_l1) has none, and its raw output is the prediction, as for
    `regression`, which lleaves then applies (the identity)."""
    text = str(booster.model_to_string())
    if "\nobjective=" not in text:
        text = text.replace("\nfeature_names=", "\nobjective=regression\nfeature_names=", 1)
    return text


def _leaves(text: str) -> int:
    return sum(int(count) for count in re.findall(r"^num_leaves=(\d+)", text, re.MULTILINE))


@functools.cache
def _machine() -> str:
    """This machine and compiler, as compiled code depends on them (asked of LLVM once)."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    try:
        cpu_features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM could not tell: the name alone
        cpu_features = ""
    compiler = f"{version('lleaves')}|{version('llvmlite')}|{json.dumps(OPTIONS, sort_keys=True)}"
    return f"{llvm.get_host_cpu_name()}|{cpu_features}|{compiler}"


def _key(text: str) -> str:
    trees = text.split("\nend of trees", 1)[0]  # not the training parameters after them
    return hashlib.sha256(f"{_machine()}\n{trees}".encode()).hexdigest()[:24]


# --- the cache's files ----------------------------------------------------------------------


def _publish(path: Path, content: str | bytes) -> None:
    """Write a file whole or not at all: under a name of its own, then renamed into place."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        if isinstance(content, str):
            staged.write_text(content)
        else:
            staged.write_bytes(content)
        staged.chmod(0o644)  # whatever the umask: _safe refuses files others may write
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)


def _safe(path: Path) -> bool:
    """Owned by this user and writable by no one else: machine code is run as it is."""
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def _verified_code(compiled: Path, seal: Path) -> bytes | None:
    """The compiled code, read once, when it is exactly what was compiled; else None."""
    if not (_safe(compiled) and _safe(seal)):
        return None
    try:
        code, expected = compiled.read_bytes(), seal.read_text().strip()
    except OSError:
        return None
    return code if hashlib.sha256(code).hexdigest() == expected else None


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[bool]:
    """One compile of a forest at a time on this machine (the lock ends with its process);
    yields False when another held it past COMPILE_SECONDS (then leave the forest be)."""
    import fcntl

    handle = os.open(base.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + COMPILE_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.5)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def _usable_folder() -> Path | None:
    """The cache folder, made or mended to be ours and writable by no one else; None (and a
    warning, once) when it cannot be: code from there would never be run, so none is compiled."""
    where = folder()
    try:
        where.mkdir(mode=0o755, parents=True, exist_ok=True)
        if where.stat().st_uid == os.getuid() and where.stat().st_mode & 0o022:
            where.chmod(0o755)  # made group-writable by a umask or a volume mount
    except OSError as exc:
        _warn_once(f"folder:{where}", "compiled trees not used: %s cannot be made (%s)", where, exc)
        return None
    if not _safe(where):
        _warn_once(
            f"folder:{where}",
            "compiled trees not used: %s is not owned by this user or others may write to it",
            where,
        )
        return None
    return where


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _sweep(where: Path) -> None:
    """Leftovers of compiles that were killed (a timeout, a process that ended mid-write)."""
    stale = time.time() - COMPILE_SECONDS
    for path in [*where.glob(".compiling-*"), *where.glob("*.part")]:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < stale:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def compile_forest(source: Path, compiled: Path, seal: Path) -> None:
    """Compile the LightGBM text `source` into `compiled`, sealed by its SHA-256 in `seal` (run
    in a child process: `python -m appraiser.fast.compiled SOURCE COMPILED SEAL`)."""
    import lleaves

    scratch = Path(tempfile.mkdtemp(dir=compiled.parent, prefix=".compiling-"))
    try:  # lleaves writes its cache file only where none exists: a folder of our own
        lleaves.Model(model_file=str(source)).compile(cache=str(scratch / "code.o"), **OPTIONS)
        code = (scratch / "code.o").read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _publish(compiled, code)
    _publish(seal, hashlib.sha256(code).hexdigest())  # last: only a whole file is ever sealed


def _build_in_child(text: str, compiled: Path, seal: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="appraiser-trees-") as private:
        source = Path(private) / "trees.txt"
        source.write_text(text)
        done = subprocess.run(  # -P: nothing from the current folder shadows a module
            [sys.executable, "-P", "-m", __name__, str(source), str(compiled), str(seal)],
            capture_output=True,
            text=True,
            timeout=COMPILE_SECONDS,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"the compiler exited with {done.returncode}: {last[:300]}")


def _load(text: str, code: bytes) -> Any:
    """lleaves' model running `code`, loaded from a private copy outside the cache (the bytes
    checked are the bytes run, and a read-only cache still serves)."""
    import lleaves

    with tempfile.TemporaryDirectory(prefix="appraiser-trees-") as private:
        source, copy = Path(private) / "trees.txt", Path(private) / "code.o"
        source.write_text(text)
        copy.write_bytes(code)
        native = lleaves.Model(model_file=str(source))
        native.compile(cache=str(copy), **OPTIONS)  # the code is in memory once this returns
    return native


def _agrees(native: Any, probe: np.ndarray, expected: np.ndarray) -> bool:
    # one stone at a time, and the rows split over threads
    return all(probes.agrees(native.predict(probe, n_jobs=t), expected) for t in (1, 2))


def _lightgbm_answers(
    forest: Forest, probe: Callable[[], np.ndarray], answers: Path, *, fresh: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """Stones to check the compiled trees on and LightGBM's predictions for them, and whether
    they were kept (rather than made now): kept beside the compiled code (keyed by the same
    trees) once LightGBM has made them, so a later load checks the code without importing
    LightGBM (a fifth of `appraiser predict`'s start-up). Kept answers count only when this
    LightGBM version made them and they read whole; `fresh` asks LightGBM regardless."""
    if not fresh and _safe(answers):
        try:
            with np.load(answers) as kept:  # no pickles: arrays only
                if str(kept["lightgbm"]) == _lightgbm_version():
                    stones = np.ascontiguousarray(kept["probe"])
                    return (stones, np.asarray(kept["expected"], dtype=float)), True
        except Exception:  # empty, truncated, not a zip...: made again below
            logger.info("the kept answers %s are unreadable: asking LightGBM again", answers.name)
    stones = probe()
    expected = np.asarray(forest.booster.predict(stones, num_threads=1), dtype=float)
    buffer = io.BytesIO()
    np.savez(buffer, probe=stones, expected=expected, lightgbm=np.array(_lightgbm_version()))
    _publish(answers, buffer.getvalue())
    return (stones, expected), False


def _lightgbm_version() -> str:
    from importlib.metadata import version  # without importing LightGBM itself

    return version("lightgbm")


def _load_or_build(forest: Forest, probe: Callable[[], np.ndarray], build_it: bool) -> bool:
    """Give `forest` its compiled trees from the cache, compiling them first when `build_it`;
    True when they are in place (and agree with LightGBM on `probe`)."""
    text = _model_text(forest.booster)
    leaves = _leaves(text)
    if leaves > MAX_LEAVES:
        logger.info("the %s trees stay with LightGBM: %d leaves", forest.role, leaves)
        return False
    where = _usable_folder()
    if where is None:
        return False
    base = where / _key(text)
    compiled, seal, refused, failed, answers = (
        base.with_suffix(s) for s in (".o", ".sha256", ".refused", ".failed", ".answers.npz")
    )
    if refused.exists():  # compiled once and found wrong: not again with this compiler
        _warn_once(
            str(refused),
            "the %s trees stay with LightGBM: their compiled code disagreed with it once "
            "(delete %s to try again)",
            forest.role,
            refused,
        )
        return False
    code = _verified_code(compiled, seal)
    if code is None:
        if not build_it:
            return False
        probe()  # raises when there are no stones to check code on: then none is compiled
        with contextlib.suppress(OSError):
            if time.time() - failed.stat().st_mtime < RETRY_SECONDS:
                return False  # the compiler failed lately: LightGBM until the back-off ends
        with _locked(base) as mine:
            if not mine:
                raise RuntimeError("another process has been compiling these trees too long")
            _sweep(where)
            code = _verified_code(compiled, seal)  # another process may have compiled it
            if code is None:
                try:
                    _build_in_child(text, compiled, seal)
                except Exception as exc:
                    _publish(failed, f"{exc}\n")
                    raise
                failed.unlink(missing_ok=True)
                code = _verified_code(compiled, seal)
                if code is None:
                    raise RuntimeError("the compiler left no sealed code")
    native = _load(text, code)
    (stones, expected), kept = _lightgbm_answers(forest, probe, answers)
    if not _agrees(native, stones, expected) and kept:
        # the kept answers may be what is wrong: LightGBM itself has the last word
        (stones, expected), _ = _lightgbm_answers(forest, probe, answers, fresh=True)
    if not _agrees(native, stones, expected):
        _publish(refused, f"compiled code disagreed with LightGBM ({compiled.name})\n")
        raise RuntimeError(f"compiled {forest.role} trees disagree with LightGBM; not used")
    # one assignment: a request sees the old or the new, whole
    holder = forest.holder
    holder.accelerated = replace(holder.accelerated or Accelerated(), compiled=native)
    return True


def attach(
    model: PriceModel, *, build: bool, stones: Callable[[], np.ndarray] | None = None
) -> bool:
    """Compiled trees for every LightGBM forest of `model`, from this machine's cache (compiled
    first when `build`), checked on `stones` (default: probe_set(model)); True when all
    of them are compiled. Never raises: a forest that cannot be compiled keeps LightGBM, and the
    reason is logged. Called by fast.accelerate."""
    wanted = [f for f in forests(model) if not f.compiled]
    if not enabled() or not wanted:
        return all(f.compiled for f in forests(model))
    # made only for trees whose answers are not kept yet (a load from the cache needs none); a
    # model without enough stones to make it keeps LightGBM for those trees, as logged below
    if stones is None:
        stones = functools.cache(lambda: probe_set(model))
    probe = stones
    for forest in wanted:
        try:
            _load_or_build(forest, probe, build)
        except Exception as exc:
            logger.warning("the %s trees stay with LightGBM: %s", forest.role, exc)
    return all(f.compiled for f in forests(model))


def main(argv: Sequence[str] | None = None) -> None:
    source, compiled, seal = (Path(a) for a in (argv or sys.argv[1:]))
    compile_forest(source, compiled, seal)


if __name__ == "__main__":
    main()

"""The model's LightGBM forests compiled to machine code for this machine (lleaves), for speed.

LightGBM walks its trees one stone at a time through a generic interpreter; lleaves compiles the
same trees with LLVM into a function that returns the same values (to about 1e-15 in log price:
only the order of the additions differs) about six times faster, one stone or a million
(benchmarks/serving.py, benchmarks/predict_throughput.py). Explanations (TreeSHAP) stay with
LightGBM; every price, range and deal check uses the compiled trees once they are ready.

Compiled code is specific to a CPU, so it never travels with a model: it lives in this machine's
model cache (`APPRAISER_HOME/cache/native`), named by a hash of the trees, the CPU and the
compiler's version. Before a compiled forest is used it must give LightGBM's answers on the
model's own reference stones, so a damaged or stale file can cost speed but never a price; any
failure leaves LightGBM in place. `APPRAISER_NATIVE_TREES=false` turns all of it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appraiser import features, model_cache
from appraiser.config import settings

if TYPE_CHECKING:
    from appraiser.models import PriceModel

logger = logging.getLogger(__name__)

PROBE_STONES = 512  # reference stones a compiled forest must price as LightGBM does
TOLERANCE = 1e-9  # in log price: the additions' order moves the result by about 1e-15


@dataclass
class Forest:
    """One LightGBM booster of a model and the object that predicts with it (`native`)."""

    holder: Any  # a LightGBMMember or an AdaptiveRange: both have .booster and .native
    role: str  # for the logs: "lightgbm", "spread"...

    @property
    def booster(self) -> Any:
        return self.holder.booster

    @property
    def compiled(self) -> bool:
        return self.holder.native is not None


def enabled() -> bool:
    return settings().native_trees


def forests(model: PriceModel) -> list[Forest]:
    """The model's LightGBM boosters: its LightGBM members and its range's spread model."""
    from appraiser.models import LightGBMMember

    found = [Forest(m, m.kind) for m in model.members if isinstance(m, LightGBMMember)]
    if model.ranges is not None and model.ranges.booster is not None:
        found.append(Forest(model.ranges, "spread"))
    return [f for f in found if f.booster is not None]


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


def _key(text: str) -> str:
    from importlib.metadata import version

    import llvmlite.binding as llvm

    try:
        cpu_features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM could not tell: the name alone
        cpu_features = ""
    compilers = f"{version('lleaves')}|{version('llvmlite')}"
    machine = f"{llvm.get_host_cpu_name()}|{cpu_features}|{compilers}"
    trees = text.split("\nend of trees", 1)[0]  # not the training parameters after them
    return hashlib.sha256(f"{machine}\n{trees}".encode()).hexdigest()[:24]


def _probe(model: PriceModel) -> np.ndarray:
    reference = model.reference
    step = max(len(reference) // PROBE_STONES, 1)
    return features.encode(reference.iloc[::step].head(PROBE_STONES)).to_numpy()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish(path: Path, content: str | bytes) -> None:
    """Write a file whole or not at all: under a name of its own, then renamed into place."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    if isinstance(content, str):
        staged.write_text(content)
    else:
        staged.write_bytes(content)
    staged.replace(path)


def _sealed(compiled: Path, seal: Path) -> bool:
    """True when the machine code is exactly the file that was compiled: it is run without any
    other check, and a damaged file would crash the process rather than raise."""
    try:
        return seal.read_text().strip() == _digest(compiled)
    except OSError:
        return False


def _compile(text: str, source: Path, compiled: Path, seal: Path) -> None:
    import lleaves

    source.parent.mkdir(parents=True, exist_ok=True)
    _publish(source, text)
    scratch = Path(tempfile.mkdtemp(dir=source.parent, prefix=".compiling-"))
    try:  # lleaves writes its cache file only where none exists: a folder of our own
        lleaves.Model(model_file=str(source)).compile(
            cache=str(scratch / compiled.name), finline=False
        )
        code = (scratch / compiled.name).read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _publish(compiled, code)
    _publish(seal, hashlib.sha256(code).hexdigest())  # last: only a whole file is ever sealed


def _load_or_build(forest: Forest, probe: np.ndarray, build: bool) -> bool:
    """Give `forest` its compiled trees from the cache, compiling them first when `build`;
    True when they are in place (and agree with LightGBM on `probe`)."""
    import lleaves

    text = _model_text(forest.booster)
    base = folder() / _key(text)
    source, compiled, seal = (base.with_suffix(s) for s in (".txt", ".o", ".sha256"))
    if not (source.exists() and _sealed(compiled, seal)):
        if not build:
            return False
        _compile(text, source, compiled, seal)
    native = lleaves.Model(model_file=str(source))
    native.compile(cache=str(compiled), finline=False)
    expected = np.asarray(forest.booster.predict(probe, num_threads=1), dtype=float)
    got = np.asarray(native.predict(probe, n_jobs=1), dtype=float)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=TOLERANCE):
        seal.unlink(missing_ok=True)  # stale: the next build makes it again
        raise RuntimeError(f"compiled {forest.role} trees disagree with LightGBM; not used")
    forest.holder.native = native  # one assignment: a request sees the old or the new, whole
    return True


def attach(model: PriceModel, *, build: bool) -> bool:
    """Compiled trees for every LightGBM forest of `model`, from this machine's cache (compiled
    first when `build`); True when all of them are compiled. Never raises: a forest that cannot be
    compiled keeps LightGBM, and the reason is logged."""
    wanted = [f for f in forests(model) if not f.compiled]
    if not enabled() or not wanted:
        return all(f.compiled for f in forests(model))
    try:
        probe = _probe(model)
    except Exception as exc:  # no reference stones to check against: do not use compiled code
        logger.warning("compiled trees not used: no stones to check them on (%s)", exc)
        return False
    for forest in wanted:
        try:
            _load_or_build(forest, probe, build)
        except Exception as exc:
            logger.warning("the %s trees stay with LightGBM: %s", forest.role, exc)
    return all(f.compiled for f in forests(model))


def attach_in_background(model: PriceModel, name: str = "") -> threading.Thread | None:
    """`attach(build=True)` in a daemon thread (the caller serves with LightGBM meanwhile and
    picks up each compiled forest as it lands); None when there is nothing to do."""
    if not enabled() or attach(model, build=False):
        return None
    thread = threading.Thread(
        target=attach, args=(model,), kwargs={"build": True}, name=f"compile-{name}", daemon=True
    )
    thread.start()
    return thread

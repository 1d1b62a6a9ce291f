"""MLflow tracking and model registry: every run, every model version, and the `champion` alias.

By default a SQLite file and local artifacts under APPRAISER_HOME; a tracking server when
MLFLOW_TRACKING_URI is set. The registered model is an MLflow pyfunc whose artifacts are the
native model files (see models.PriceModel), so `mlflow models serve` and Spark can load it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.pyfunc import log_model as log_pyfunc_model
from mlflow.tracking import MlflowClient

from appraiser import fast, model_cache
from appraiser.config import EXPERIMENT, REGISTERED_MODEL, settings
from appraiser.model_cache import PRICER_ARTIFACT, RegistryError, RegistryUnavailable
from appraiser.models import PriceModel
from appraiser.scoring import score_frame

CHAMPION = "champion"
# raised here but defined in model_cache: `appraiser predict` catches them having imported only
# that light module, and importing this one (MLflow) would add 1.6 s to its start-up
__all__ = ["RegistryError", "RegistryUnavailable"]

# MLflow is chatty about things a user can do nothing about (git not found, pip inference).
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.WARNING)


def client() -> MlflowClient:
    """Point MLflow at our store (a SQLite file under APPRAISER_HOME unless a server is set)."""
    cfg = settings()
    if not cfg.mlflow_tracking_uri:
        cfg.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    if not cfg.mlflow_tracking_uri:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, our default would read as
        # a user's server and pin every later APPRAISER_HOME of this process to this one
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def mlflow_env() -> dict[str, str]:
    """The environment a child process running MLflow (`mlflow models serve`, a Spark worker)
    needs to find our store. `client()` takes the URI out of os.environ, so a child started with
    a copy of it would fall back to MLflow's default store: an `mlflow.db` in its working folder
    (which is how an empty one got committed at the repository root)."""
    uri = settings().tracking_uri
    return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


def use_experiment() -> None:
    """Make our experiment the active one (creating it, with local artifacts, on first use)."""
    client()
    cfg = settings()
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        location = None if cfg.mlflow_tracking_uri else cfg.artifact_root.as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    mlflow.set_experiment(EXPERIMENT)


class PricerPyfunc(PythonModel):
    """The price model as an MLflow pyfunc: raw stone columns in, price and range out."""

    def load_context(self, context: Any) -> None:
        self.model = PriceModel.load(Path(context.artifacts[PRICER_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return score_frame(self.model, model_input)[["price", "price_low", "price_high", "error"]]


# what the logged model needs, each as the distributions that provide it (the first installed is
# pinned): the image has MLflow's client only, a dev venv the server too; on Linux both have
# XGBoost's CPU build
REQUIREMENTS = (
    ("lightgbm",),
    ("xgboost", "xgboost-cpu"),
    ("scikit-learn",),
    ("pandas",),
    ("numpy",),
    ("pyarrow",),
    ("pandera",),
    ("pydantic",),
    ("pydantic-settings",),
    ("mlflow", "mlflow-skinny"),
)


def _requirements() -> list[str]:
    """Each requirement pinned to the installed distribution that provides it."""
    pins = []
    for names in REQUIREMENTS:
        for name in names:
            with contextlib.suppress(PackageNotFoundError):
                pins.append(f"{name}=={package_version(name)}")
                break
        else:
            raise PackageNotFoundError(f"none of {names} is installed")
    return pins


def log_model(model_dir: Path, example: pd.DataFrame) -> str:
    """Log a saved PriceModel folder as a pyfunc in the active run; returns its model URI."""
    from mlflow.models import infer_signature

    output = pd.DataFrame({"price": [1.0], "price_low": [1.0], "price_high": [1.0], "error": [""]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = log_pyfunc_model(
            name="model",
            python_model=PricerPyfunc(),
            artifacts={PRICER_ARTIFACT: str(model_dir)},
            signature=infer_signature(example, output),
            pip_requirements=_requirements(),
        )
    return str(info.model_uri)


def register(model_uri: str, run_id: str, description: str) -> str:
    """Register a logged model as a new version; returns the version number."""
    cl = client()
    try:
        cl.get_registered_model(REGISTERED_MODEL)
    except MlflowException:
        cl.create_registered_model(
            REGISTERED_MODEL,
            description="Prices a diamond from carat, cut, color, clarity, "
            "depth, table and measurements, with a 90% range and reasons.",
        )
    # a logged model's URI is models:/<model id>; a tracking server accepts that source only
    # with the id given too (the local store resolves it by itself)
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
    mv = cl.create_model_version(
        REGISTERED_MODEL, model_uri, run_id=run_id, description=description, model_id=model_id
    )
    return str(mv.version)


def _champion_alias() -> str | None:
    """The version MLflow's `champion` alias points to, or None when there is none. Only for
    champion.current(), the one answer to who is champion (the store's history wins).

    Only "no such model" and "no such alias" mean no champion; any other failure (the tracking
    server down, a corrupt store) raises RegistryError, so nothing promotes without a comparison.
    """
    cl = client()
    try:
        return str(cl.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except MlflowException as exc:
        if _means_not_found(exc):
            return None
        raise RegistryUnavailable(f"the model registry cannot be read: {exc}") from exc
    except Exception as exc:  # network, database: a broken registry is not an empty one
        raise RegistryUnavailable(
            f"the model registry cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _means_not_found(exc: MlflowException) -> bool:
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc.message)


def set_champion_alias(version: str, reason: str) -> None:
    """Point the `champion` alias at a version (one atomic update) and tag why.

    Low level: people and the gate move the champion through `champion.py`, which holds the
    pipeline lock, checks nobody moved it meanwhile and keeps the history.
    """
    cl = client()
    try:
        cl.get_model_version(REGISTERED_MODEL, version)
    except MlflowException as exc:
        if not _means_not_found(exc):
            raise RegistryUnavailable(f"the model registry cannot be read: {exc}") from exc
        raise RegistryError(
            f"model version {version} does not exist (see `appraiser models`)"
        ) from exc
    cl.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    cl.set_model_version_tag(REGISTERED_MODEL, version, "promoted_because", reason[:5000])


def promoted_versions_before(current: str) -> list[int]:
    """Versions older than `current` that were champion once (for stores with no history)."""
    return [
        int(mv.version)
        for mv in client().search_model_versions(f"name='{REGISTERED_MODEL}'")
        if int(mv.version) < int(current) and "promoted_because" in (mv.tags or {})
    ]


def load_version(version: str, *, keep: Sequence[str] = ()) -> tuple[str, PriceModel]:
    """Load a version (the champion: champion.current()) as a PriceModel, caching its files
    locally; `keep`: versions the cache must not prune (the champion, when loading another)."""
    cache = model_cache.folder(version)
    if not model_cache.is_complete(version):
        client()
        cache.parent.mkdir(parents=True, exist_ok=True)
        # each process downloads into its own folder, then publishes it with one rename: several
        # workers sharing a home never see (or damage) one another's half-finished download
        staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.partial-", dir=cache.parent))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{REGISTERED_MODEL}/{version}", dst_path=str(staging)
            )
            if cache.exists() and not (cache / "MLmodel").exists():
                shutil.rmtree(cache, ignore_errors=True)  # a broken copy: replace it
            try:
                staging.rename(cache)
            except OSError:
                if not (cache / "MLmodel").exists():  # not another process's copy: a real error
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # a new version landed: the oldest go, never `keep` (a challenger may be newer)
        model_cache.prune(loaded=version, also=keep)
    model = PriceModel.load(model_cache.pricer_folder(version))
    fast.accelerate(model, build="no", explain=False)  # compiled trees already on this machine
    return version, model


@dataclass
class VersionInfo:
    version: str
    champion: bool
    created: pd.Timestamp
    run_id: str
    model: str
    metrics: dict[str, float]
    description: str
    gate: dict[str, float] = field(default_factory=dict)  # the decision's numbers (gate_*)
    sealed: dict[str, float] = field(default_factory=dict)  # its error on the sealed set


def versions(champion: str | None) -> list[VersionInfo]:
    """All registered versions, newest first, with the holdout metrics of the run that made them
    (`champion` flagged: champion.versions() passes champion.current())."""
    cl = client()
    out = []
    for mv in cl.search_model_versions(f"name='{REGISTERED_MODEL}'"):
        mv_: ModelVersion = mv
        run = cl.get_run(mv_.run_id) if mv_.run_id else None
        logged = run.data.metrics if run else {}
        metrics = {
            k.removeprefix("holdout_"): v for k, v in logged.items() if k.startswith("holdout_")
        }
        gate = {k.removeprefix("gate_"): v for k, v in logged.items() if k.startswith("gate_")}
        sealed = {
            k.removeprefix("sealed_"): v for k, v in logged.items() if k.startswith("sealed_")
        }
        out.append(
            VersionInfo(
                version=str(mv_.version),
                champion=str(mv_.version) == champion,
                created=pd.Timestamp(mv_.creation_timestamp, unit="ms"),
                run_id=mv_.run_id or "",
                model=(run.data.params.get("model", "") if run else ""),
                metrics=metrics,
                description=mv_.description or "",
                gate=gate,
                sealed=sealed,
            )
        )
    return sorted(out, key=lambda v: int(v.version), reverse=True)

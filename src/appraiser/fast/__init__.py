"""One home for speed: what makes a loaded champion fast, attached by one call, accelerate().

- compiled.py: its LightGBM forests compiled for this machine (lleaves), for prices and ranges;
- tables.py: its LightGBM members' TreeSHAP values tabulated, for explanations;
- probe.py: the one set of stones both are checked on against LightGBM, to one tolerance.

What they make is attached to the model through the slot its classes declare
(models.Accelerated on LightGBMMember and AdaptiveRange); until then, LightGBM answers. Anything
that fails leaves LightGBM in place and is logged.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from appraiser.fast import compiled, probe
from appraiser.fast.tables import LeafTables
from appraiser.models import Accelerated

if TYPE_CHECKING:
    import numpy as np

    from appraiser.models import PriceModel

logger = logging.getLogger(__name__)

_in_flight: set[int] = set()  # models this process is accelerating in the background
_in_flight_lock = threading.Lock()


def accelerate(
    model: PriceModel,
    *,
    build: Literal["no", "now", "background"] = "background",
    explain: bool = True,
) -> threading.Thread | None:
    """Make `model` fast, on the one probe set: compiled trees found in this machine's cache are
    attached now; with build="now" the missing ones are compiled here (`appraiser predict`,
    training), with "background" they are compiled, and then (with `explain`) the TreeSHAP
    tables made, in one daemon thread, returned (None when there is nothing left to make)."""
    stones = functools.cache(lambda: compiled.probe_set(model))
    compiled.attach(model, build=build == "now", stones=stones)
    if build == "now" and explain:
        _tables(model, stones)
    if build != "background" or not _missing(model, explain):
        return None
    with _in_flight_lock:
        if id(model) in _in_flight:
            return None
        _in_flight.add(id(model))

    def run() -> None:
        try:
            compiled.attach(model, build=True, stones=stones)
            if explain:
                _tables(model, stones)
        finally:
            with _in_flight_lock:
                _in_flight.discard(id(model))

    thread = threading.Thread(target=run, name="accelerate", daemon=True)
    thread.start()
    return thread


def _members(model: PriceModel) -> list[Any]:
    from appraiser.models import LightGBMMember

    return [m for m in model.members if isinstance(m, LightGBMMember) and m.booster]


def _missing(model: PriceModel, explain: bool) -> bool:
    uncompiled = compiled.enabled() and not all(f.compiled for f in compiled.forests(model))
    untabled = explain and any(
        m.accelerated is None or m.accelerated.tables is None for m in _members(model)
    )
    return uncompiled or untabled


def _tables(model: PriceModel, stones: functools._lru_cache_wrapper[np.ndarray]) -> bool:
    """TreeSHAP tables for every LightGBM member without them; True when all have them."""
    try:
        probe_set = stones()
    except ValueError as exc:  # too few reference stones: the thresholds' grid alone
        logger.info("TreeSHAP tables checked on the thresholds' grid only: %s", exc)
        probe_set = None
    for member in _members(model):
        if member.accelerated is None or member.accelerated.tables is None:
            tables = LeafTables.build(member.booster, probe_set)
            if tables is not None:
                member.accelerated = replace(member.accelerated or Accelerated(), tables=tables)
    return all(m.accelerated is not None and m.accelerated.tables for m in _members(model))


__all__ = ["accelerate", "compiled", "probe"]

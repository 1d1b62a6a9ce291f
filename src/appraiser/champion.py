"""Who is champion (`current()`, the one answer), and every move of it, made safely and
remembered in order.

The store's `promotions` history is the source of truth: it is written under the pipeline lock,
with an audit row, by every move below. MLflow's `champion` alias follows it, but anyone who
reaches MLflow can move the alias; an alias that disagrees with the history is logged and not
followed. Only a store with no history at all (one from before it was kept) takes the alias; a
store that cannot be read now is an error, never a reason to follow the alias.

A move (the gate's promotion, a person's promotion, a rollback) happens under the pipeline lock
and only if the champion is still the one the decision was made against (compare-and-set): a gate
that trained for minutes cannot undo a promotion made meanwhile. Every move is kept in the store's
`promotions` table, and a rollback walks that history back, so after v5 (bad) -> rollback -> v6,
rolling back again returns to what v6 replaced, never to v5.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appraiser.config import STORE_FILE, StoreSettings, settings
from appraiser.model_cache import RegistryError

if TYPE_CHECKING:
    from appraiser.models import PriceModel
    from appraiser.registry import VersionInfo

# Imported where used: `appraiser predict` asks current(registry=False) and must not pay for
# MLflow (1.5 s) or SQLAlchemy; registry, store, audit and locking import them.

log = logging.getLogger(__name__)

ANY = object()  # `expected` for a move that does not depend on who is champion now


class ChampionChanged(RegistryError):
    """The champion moved between a decision and its promotion: nothing was changed."""


def current(*, registry: bool = True) -> str | None:
    """The champion's version: the last move in the store's promotion history, or MLflow's
    `champion` alias when the store has no history (None: there is no champion).

    With `registry` (the default) the alias is read too: one that disagrees with the history was
    moved outside it (straight in MLflow) and is logged, never followed; an unreadable registry
    raises RegistryUnavailable, so nothing is promoted or served on a half-read state.
    `registry=False` answers from the store alone when it has history (no MLflow import).
    """
    stored = _stored()
    if stored is not None and not registry:
        return stored
    from appraiser import registry as mlflow_registry

    alias = mlflow_registry._champion_alias()
    if stored is None:
        return alias
    if alias != stored and (stored, alias) not in _warned:
        _warned.add((stored, alias))
        log.warning(
            "MLflow's champion alias points to %s but the store's promotion history to v%s: "
            "the alias was moved outside `appraiser models promote`; v%s stays champion",
            _name(alias),
            stored,
            stored,
        )
    return stored


_warned: set[tuple[str, str | None]] = set()  # disagreements logged once each


def loaded() -> tuple[str, PriceModel] | None:
    """The champion's version and model (from the local cache), None when there is none; with no
    tracking server and no local registry yet there is none, and MLflow (3 s to import) is not
    imported to say so."""
    from appraiser.config import settings

    cfg = settings()
    if not cfg.mlflow_tracking_uri and not (cfg.home / "mlflow.db").exists():
        return None
    version = current()
    if version is None:
        return None
    from appraiser import registry

    return registry.load_version(version)


def _stored() -> str | None:
    """The last move in the store's promotion history; None when it has none (a new store, or
    one from before the history was kept): then the alias answers. A store that cannot be read
    raises RegistryUnavailable: whoever moved the alias must not win by an outage."""
    if not StoreSettings().database_url:  # the default SQLite store, as store.database_url
        return _stored_sqlite(settings().home.resolve() / STORE_FILE)
    from sqlalchemy import select
    from sqlalchemy.exc import DBAPIError

    from appraiser import store

    try:
        with store.session() as s:
            latest = s.scalars(
                select(store.Promotion.version).order_by(store.Promotion.id.desc()).limit(1)
            ).first()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42P01" and not _no_table(exc):
            raise _unreadable(exc) from exc
        log.debug("no champion from the store's history: %s", exc)  # undefined_table
        return None
    return str(latest) if latest is not None else None


def _no_table(exc: Exception) -> bool:
    return "no such table" in str(exc)


def _unreadable(exc: Exception) -> RegistryError:
    from appraiser.model_cache import RegistryUnavailable

    return RegistryUnavailable(
        f"the store's champion history cannot be read ({type(exc).__name__}: {exc}); the "
        "registry's alias is not followed instead"
    )


def _stored_sqlite(path: Path) -> str | None:
    """_stored for the default SQLite store, read with the standard library's driver
    (read-only), as SQLAlchemy's import is a tenth of `appraiser predict`'s start-up. The query
    is store.Promotion's (tests/test_predict.py checks the two reads agree)."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            latest = connection.execute(
                "SELECT version FROM promotions ORDER BY id DESC LIMIT 1"
            ).fetchone()
    except sqlite3.Error as exc:
        if not _no_table(exc):  # locked past the timeout, corrupt, unreadable
            raise _unreadable(exc) from exc
        log.debug("no champion from the store's history: %s", exc)
        return None
    return str(latest[0]) if latest is not None else None


def versions() -> list[VersionInfo]:
    """All registered versions, newest first, the champion (current()) flagged."""
    from appraiser import registry

    return registry.versions(current())


def move(
    version: str,
    *,
    kind: str,
    reason: str,
    actor: str,
    expected: str | object | None = ANY,
) -> str | None:
    """Make `version` the champion and record it; returns the version it replaced.

    `expected` is the champion the decision was made against: if another is champion now, nothing
    moves and ChampionChanged is raised. Raises PipelineBusy when a pass or retrain runs.
    """
    from appraiser import locking

    with locking.exclusive():
        now = current()
        if expected is not ANY and now != expected:
            raise ChampionChanged(
                f"the champion is {_name(now)}, no longer {_name(expected)} as when the decision "
                f"was made: v{version} was not promoted"
            )
        _move_and_record(str(version), now, kind, reason, actor)
        return now


def _move_and_record(version: str, now: str | None, kind: str, reason: str, actor: str) -> None:
    """Set the alias and write its history row as one step: the row is written in a transaction
    that commits only after the alias moved; if the commit fails, the alias goes back."""
    from appraiser import audit, registry, store

    moved = False
    try:
        store.ready()
        with store.session() as s, s.begin():
            s.add(
                store.Promotion(
                    version=version, previous=now, kind=kind, reason=reason, actor=actor[:200]
                )
            )
            audit.record(
                actor,
                "rollback" if kind == "rollback" else "promotion",
                session=s,
                version=version,
                previous=now,
                kind=kind,
                reason=reason,
            )
            s.flush()
            moved = True  # from here on, the alias may have moved (restoring it is harmless)
            registry.set_champion_alias(version, reason)
    except Exception:
        if moved and now is not None:  # the history could not be written: undo the move
            registry.set_champion_alias(now, f"restored: recording the move to v{version} failed")
        raise
    from appraiser import market_loop, registry

    # the new champion's prices are the base the level measures
    market_loop.after_promotion(lambda: registry.load_version(version))


def promote(
    version: str,
    *,
    actor: str,
    reason: str = "promoted by hand",
    expected: str | object | None = ANY,
) -> str | None:
    """A person's promotion of any registered version (`expected`: only if that one is champion,
    so two people acting on the same screen cannot undo each other)."""
    return move(version, kind="promote", reason=reason, actor=actor, expected=expected)


def rollback(*, actor: str) -> str:
    """Give the alias back to the champion the current one replaced; returns that version."""
    from appraiser import locking, registry

    with locking.exclusive():
        now = current()
        if now is None:
            raise RegistryError("no champion yet: nothing to roll back")
        moves = history()
        if moves:
            stack = _stack(moves, now)
            if len(stack) < 2:
                raise RegistryError(
                    f"v{now} is the first champion on record: there is none to roll back to"
                )
            target = stack[-2]
        else:  # a store from before the history was kept: the newest earlier champion
            earlier = registry.promoted_versions_before(now)
            if not earlier:
                raise RegistryError(f"v{now} is the first champion: there is none to roll back to")
            target = str(max(earlier))
        _move_and_record(target, now, "rollback", f"rollback from v{now}", actor)
        return target


def _stack(moves: list[dict[str, Any]], now: str) -> list[str]:
    """The chain of champions that led to `now`, oldest first: a promotion pushes, a rollback
    pops back to its target."""
    stack: list[str] = []
    for m in moves:
        if m["kind"] == "rollback" and m["version"] in stack:
            while stack[-1] != m["version"]:
                stack.pop()
            continue
        # a champion set before the history was kept is known from the move that replaced it
        if m["previous"] is not None and (not stack or stack[-1] != m["previous"]):
            stack.append(m["previous"])
        if not stack or stack[-1] != m["version"]:
            stack.append(m["version"])
    if not stack or stack[-1] != now:  # the alias was moved outside this history
        stack.append(now)
    return stack


def _name(version: object) -> str:
    return "no champion" if version is None else f"v{version}"


def history() -> list[dict[str, Any]]:
    """Every move of the champion alias, oldest first."""
    from sqlalchemy import select

    from appraiser import store

    store.ready()
    with store.session() as s:
        rows = s.scalars(select(store.Promotion).order_by(store.Promotion.id)).all()
        return [
            {
                "version": r.version,
                "previous": r.previous,
                "kind": r.kind,
                "reason": r.reason,
                "actor": r.actor,
                "at": r.created_at,
            }
            for r in rows
        ]

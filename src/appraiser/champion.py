"""Who is champion: every move of the `champion` alias, made safely and remembered in order.

A move (the gate's promotion, a person's promotion, a rollback) happens under the pipeline lock
and only if the champion is still the one the decision was made against (compare-and-set): a gate
that trained for minutes cannot undo a promotion made meanwhile. Every move is kept in the store's
`promotions` table, and a rollback walks that history back, so after v5 (bad) -> rollback -> v6,
rolling back again returns to what v6 replaced, never to v5.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from appraiser import audit, locking, registry, store
from appraiser.registry import RegistryError

ANY = object()  # `expected` for a move that does not depend on who is champion now


class ChampionChanged(RegistryError):
    """The champion moved between a decision and its promotion: nothing was changed."""


def current() -> str | None:
    """The champion's version (None: there is none; RegistryError: the registry is down)."""
    return registry.champion_version()


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

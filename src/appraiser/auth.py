"""API keys and roles: who may appraise, who may teach the model, who may change it.

Roles, each allowed what the ones before it are:
- `staff`: appraise (when APPRAISER_REQUIRE_KEYS=true nobody else may; otherwise anyone may);
- `expert`: also send expert prices (they wait for an admin's review before teaching anything);
- `admin`: everything (review prices, upload stones, promote, roll back, retrain, keys, audit).

Keys are 256-bit random strings shown once when made; the store keeps only their SHA-256 (a
slow password hash buys nothing against a random 256-bit secret, and a lookup must be cheap).
APPRAISER_API_KEY stays valid as a bootstrap admin key, so the first real keys can be made.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from appraiser import audit, clock, store
from appraiser.config import settings

ROLES = ("staff", "expert", "admin")
KEY_PREFIX = "dak_"  # "diamond appraiser key": recognisable in logs and secret scanners
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")
KEY_PATTERN = re.compile(r"^dak_[A-Za-z0-9_-]{43}$")  # KEY_PREFIX + token_urlsafe(32)
BOOTSTRAP = "bootstrap-admin"  # the name APPRAISER_API_KEY acts under
# names the system acts under in the audit trail: no key may take them
RESERVED = frozenset({BOOTSTRAP, "anonymous", "gate", "pipeline", "unknown", "api", "cli"})
CACHE_SECONDS = 5.0  # a revoked key stops working within this long on every server


class KeyRefused(ValueError):
    """A key operation a person asked for cannot be done (the message says why); `status` is
    the HTTP answer (409: a conflict with what exists, 422: a bad request, 404: no such key)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and role, or anonymous (role None)."""

    name: str
    role: str | None

    def can(self, role: str) -> bool:
        """True when this caller holds `role` or one above it."""
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Principal("anonymous", None)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, role: str, *, actor: str) -> str:
    """Make a key for `name` with `role`; returns the key itself (shown once, never stored)."""
    if role not in ROLES:
        raise KeyRefused(f"role: must be one of {', '.join(ROLES)}, not {role!r}", status=422)
    if not NAME_PATTERN.match(name) or name in RESERVED or name.startswith("cli:"):
        raise KeyRefused(
            "name: 1-100 characters, letters, digits, space, '.', '_', '@' or '-', starting "
            "with a letter or digit, and not one the system acts under "
            f"({', '.join(sorted(RESERVED))})",
            status=422,
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.ready()
    try:
        with store.session() as s, s.begin():
            s.add(
                store.ApiKey(
                    name=name,
                    role=role,
                    key_hash=digest(key),
                    prefix=key[:10],
                    created_by=actor[:200],
                )
            )
            audit.record(actor, "key_created", session=s, name=name, role=role)
    except IntegrityError as exc:
        raise KeyRefused(f"name: a key named {name!r} exists already (revoked or not)") from exc
    return key


def list_keys() -> list[dict[str, Any]]:
    """Every key ever made (never the key itself): name, role, prefix, made, revoked."""
    store.ready()
    with store.session() as s:
        rows = s.scalars(select(store.ApiKey).order_by(store.ApiKey.id)).all()
        return [
            {
                "name": r.name,
                "role": r.role,
                "prefix": r.prefix,
                "created_at": r.created_at,
                "created_by": r.created_by,
                "revoked_at": r.revoked_at,
                "revoked_by": r.revoked_by,
                "active": r.revoked_at is None,
            }
            for r in rows
        ]


def revoke_key(name: str, *, actor: str) -> None:
    """Revoke the key named `name` (at once on this process, within CACHE_SECONDS elsewhere)."""
    store.ready()
    with store.session() as s, s.begin():
        row = s.scalars(select(store.ApiKey).where(store.ApiKey.name == name)).one_or_none()
        if row is None:
            raise KeyRefused(
                f"name: no key named {name!r} (`appraiser keys list` shows them)", status=404
            )
        if row.revoked_at is not None:
            raise KeyRefused(f"name: the key {name!r} was revoked already")
        row.revoked_at = clock.now()
        row.revoked_by = actor[:200]
        audit.record(actor, "key_revoked", session=s, name=name, role=row.role)
    _cache.clear()


# --- authentication, on every request that carries a key -----------------------------------------

_cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
CACHE_ENTRIES = 10_000
_cache_lock = threading.Lock()


def authenticate(key: str, bootstrap: str | None = None) -> Principal | None:
    """The caller a key stands for, or None for a key nobody holds (or a revoked one).
    `bootstrap`: the APPRAISER_API_KEY in force (default: the process's settings)."""
    if bootstrap is None:
        secret = settings().api_key
        bootstrap = secret.get_secret_value() if secret is not None else ""
    if bootstrap and hmac.compare_digest(key.encode(), bootstrap.encode()):
        return Principal(BOOTSTRAP, "admin")
    if not KEY_PATTERN.match(key):
        return None  # not one of ours: no database round trip
    hashed = digest(key)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(hashed)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
    store.ready()
    with store.session() as s:
        row = s.scalars(
            select(store.ApiKey).where(
                store.ApiKey.key_hash == hashed, store.ApiKey.revoked_at.is_(None)
            )
        ).one_or_none()
        found = Principal(row.name, row.role) if row is not None else None
    with _cache_lock:
        _cache[hashed] = (now, found)
        _cache.move_to_end(hashed)
        while len(_cache) > CACHE_ENTRIES:  # the oldest go first: valid keys stay when
            _cache.popitem(last=False)  # random ones stream in
    return found

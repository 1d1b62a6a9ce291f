"""API keys and roles: who may appraise, who may teach the model, who may change it.

Roles, each allowed what the ones before it are:
- `staff`: appraise (when APPRAISER_REQUIRE_KEYS=true nobody else may; otherwise anyone may);
- `expert`: also send expert prices (they wait for an admin's review before teaching anything);
- `admin`: everything (review prices, upload stones, promote, roll back, retrain, keys, audit).

Keys are 256-bit random strings shown once when made; the store keeps only their SHA-256 (a
slow password hash buys nothing against a random 256-bit secret, and a lookup must be cheap).
APPRAISER_API_KEY stays valid as a bootstrap admin key, so the first real keys can be made.

Every key belongs to a person (`person`), and rules that are about people (nobody approves their
own expert price: feedback.review) compare persons, never keys, so a second key does not make a
second person. Who a new key belongs to:
- the person named when it is made (`--person`, the API's `person`): an admin hands a key to
  someone else this way, and the audit trail keeps who named whom (`key_created`);
- otherwise its maker's person: a key made with a key belongs to that key's person, one made
  from the command line to the shell's user (`cli:<user>` is the person `<user>`), one made
  with the bootstrap key to the person `bootstrap admin` (the bootstrap key is its own person).
Persons are compared in canonical form (audit.canonical), so `Ana` and `ana ` are one person.

Names are unique in canonical form (case folded, runs of spaces, '.', '_', '@' and '-' as one
space, none at the ends), so `Shop` cannot join `shop`; a name whose canonical form is one the
system acts under (RESERVED) or starts with a system prefix (`api job`, `cli`, `system`) is
refused (`gate `, `Gate`, `bootstrap-admin.`, `api job 0192abcd`). The system's own actors carry
a `system:` prefix in the audit trail, and no name may hold a ':'.
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
# names the system acts under, or did in earlier audit rows: no key may take one that looks alike
RESERVED = frozenset(
    {BOOTSTRAP, "anonymous", "gate", "pipeline", "unknown", "api", "cli", "system"}
)
RESERVED_PREFIXES = ("api job", "cli", "system")  # canonical: `api job <id>`, `cli:`, `system:`
CACHE_SECONDS = 5.0  # a revoked key stops working within this long on every server


class KeyRefused(ValueError):
    """A key operation a person asked for cannot be done (the message says why); `status` is
    the HTTP answer (409: a conflict with what exists, 422: a bad request, 404: no such key)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, role and person, or anonymous (role None)."""

    name: str
    role: str | None
    person: str | None = None

    def can(self, role: str) -> bool:
        """True when this caller holds `role` or one above it."""
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Principal("anonymous", None)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _refused_name(field: str, value: str) -> KeyRefused:
    return KeyRefused(
        f"{field}: 1-100 characters, letters, digits, space, '.', '_', '@' or '-', starting "
        f"with a letter or digit, and not like a name the system acts under ({value!r} is "
        f"{audit.canonical(value)!r} once case and separators are set aside; refused: "
        f"{', '.join(sorted(RESERVED))}, and names starting with "
        f"{', '.join(repr(p) for p in RESERVED_PREFIXES)})",
        status=422,
    )


def check_name(name: str, field: str = "name") -> tuple[str, str]:
    """(the name as kept: trimmed, inner spaces collapsed; its canonical form), or KeyRefused
    for a name that breaks NAME_PATTERN or looks like one the system acts under."""
    kept = " ".join(name.split())
    key = audit.canonical(kept)
    system_like = key in {audit.canonical(r) for r in RESERVED} or any(
        key == p or key.startswith(p + " ") for p in RESERVED_PREFIXES
    )
    if not NAME_PATTERN.match(kept) or not key or system_like:
        raise _refused_name(field, name)
    return kept, key


def create_key(name: str, role: str, *, actor: str, person: str | None = None) -> str:
    """Make a key for `name` with `role`, held by `person` (default: `actor`'s person, see the
    module's docstring); returns the key itself (shown once, never stored)."""
    if role not in ROLES:
        raise KeyRefused(f"role: must be one of {', '.join(ROLES)}, not {role!r}", status=422)
    kept, name_key = check_name(name)
    holder = check_name(person, "person")[1] if person is not None else None
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.ready()
    try:
        with store.session() as s, s.begin():
            if holder is None:
                holder = audit.person_of(actor, s) or name_key  # the system: the key's own
            s.add(
                store.ApiKey(
                    name=kept,
                    name_key=name_key,
                    person=holder[:100],
                    role=role,
                    key_hash=digest(key),
                    prefix=key[:10],
                    created_by=actor[:200],
                )
            )
            audit.record(
                actor,
                "key_created",
                session=s,
                name=kept,
                role=role,
                holder=holder,
                named=person is not None,
            )
    except IntegrityError as exc:
        raise KeyRefused(
            f"name: a key named like {kept!r} exists already (revoked or not; names are "
            "compared without case and separators)"
        ) from exc
    return key


def list_keys() -> list[dict[str, Any]]:
    """Every key ever made (never the key itself): name, person, role, prefix, made, revoked."""
    store.ready()
    with store.session() as s:
        rows = s.scalars(select(store.ApiKey).order_by(store.ApiKey.id)).all()
        return [
            {
                "name": r.name,
                "person": r.person,
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


def revoke_key(name: str, *, actor: str) -> str:
    """Revoke the key named `name`, in any case and spacing (at once on this process, within
    CACHE_SECONDS elsewhere); returns its name as kept."""
    store.ready()
    with store.session() as s, s.begin():
        row = s.scalars(
            select(store.ApiKey).where(store.ApiKey.name_key == audit.canonical(name))
        ).one_or_none()
        if row is None:
            raise KeyRefused(
                f"name: no key named {name!r} (`appraiser keys list` shows them)", status=404
            )
        if row.revoked_at is not None:
            raise KeyRefused(f"name: the key {row.name!r} was revoked already")
        row.revoked_at = clock.now()
        row.revoked_by = actor[:200]
        audit.record(actor, "key_revoked", session=s, name=row.name, role=row.role)
        revoked = row.name
    _cache.clear()
    return revoked


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
        return Principal(BOOTSTRAP, "admin", audit.canonical(BOOTSTRAP))
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
        found = Principal(row.name, row.role, row.person) if row is not None else None
    with _cache_lock:
        _cache[hashed] = (now, found)
        _cache.move_to_end(hashed)
        while len(_cache) > CACHE_ENTRIES:  # the oldest go first: valid keys stay when
            _cache.popitem(last=False)  # random ones stream in
    return found

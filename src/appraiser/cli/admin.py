"""`appraiser keys` (API keys with roles; only their hashes are kept) and `audit` (who did
what, when)."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer
from rich.table import Table

from appraiser.cli.options import Json
from appraiser.cli.render import console, err, fail, literal

keys_app = typer.Typer(help="API keys with roles (staff, expert, admin); only hashes are kept.")


class Role(enum.StrEnum):
    staff = "staff"
    expert = "expert"
    admin = "admin"


@keys_app.command("create")
def keys_create(
    role: Annotated[
        Role, typer.Option(help="staff: appraise; expert: also send prices; admin: all")
    ],
    name: Annotated[str, typer.Option(help="the key's name (unique)")],
    person: Annotated[
        str | None,
        typer.Option(help="who holds it; default: you (the shell's user, as `cli:USER`)"),
    ] = None,
) -> None:
    """Make an API key. It is printed once, on the last line: only its hash is kept."""
    from appraiser import audit, auth

    try:
        key = auth.create_key(name, role.value, actor=audit.cli_actor(), person=person)
    except auth.KeyRefused as exc:
        raise fail(str(exc)) from exc
    holder = person or audit.person_of(audit.cli_actor())
    err.print(
        literal(f"Key {name!r} ({role.value}, held by {holder}) made; it is shown once, below:")
    )
    print(key)


@keys_app.command("list")
def keys_list(as_json: Json = False) -> None:
    """Every key made, active or revoked (never the keys themselves)."""
    from appraiser import auth

    found = auth.list_keys()
    if as_json:
        print(json.dumps(found, default=str))
        return
    table = Table("name", "person", "role", "starts with", "made", "by", "revoked")
    for k in found:
        table.add_row(
            literal(k["name"]),
            literal(k["person"]),
            literal(k["role"]),
            literal(k["prefix"]),
            str(k["created_at"])[:19],
            literal(k["created_by"]),
            str(k["revoked_at"])[:19] if k["revoked_at"] else "",
        )
    console.print(table if found else "No keys yet: `appraiser keys create --role ROLE --name N`.")


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Revoke a key: refused at once here, within seconds by running servers."""
    from appraiser import audit, auth

    try:
        auth.revoke_key(name, actor=audit.cli_actor())
    except auth.KeyRefused as exc:
        raise fail(str(exc)) from exc
    console.print(literal(f"Key {name!r} revoked."))


def audit_cmd(
    action: Annotated[str | None, typer.Option(help="only this kind of action")] = None,
    actor: Annotated[str | None, typer.Option(help="only this key's name (or cli:USER)")] = None,
    person: Annotated[str | None, typer.Option(help="only this person's actions")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    as_json: Json = False,
) -> None:
    """The audit trail, newest first: who did what, when."""
    from appraiser import audit

    if action is not None and action not in audit.ACTIONS:
        raise fail(f"--action: one of {', '.join(audit.ACTIONS)}", code=2)
    found = audit.events(limit=limit, action=action, actor=actor, person=person)
    if as_json:
        print(json.dumps(found, default=str))
        return
    table = Table("at", "actor", "person", "action", "details")
    for e in found:
        details = json.dumps(e["details"], default=str)
        table.add_row(
            str(e["at"])[:19],
            literal(e["actor"]),
            literal(e["person"] or ""),
            literal(e["action"]),
            literal(details),
        )
    console.print(table if found else "Nothing in the audit trail yet.")

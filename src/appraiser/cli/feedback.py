"""`appraiser feedback`: experts' prices for past appraisals, and their review before they
teach the model."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer
from rich.table import Table

from appraiser import schema
from appraiser.cli.options import Json
from appraiser.cli.render import console, fail, literal

feedback_app = typer.Typer(help="Experts' prices: send, and review them before they teach.")


@feedback_app.command("send")
def feedback_send(
    appraisal_id: Annotated[
        str, typer.Argument(metavar="APPRAISAL_ID", help="printed by `explain` or the API")
    ],
    price: Annotated[float, typer.Argument(help="the expert's price, USD")],
) -> None:
    """Send an expert's price for a past appraisal: kept as pending until an admin approves it."""
    from appraiser import audit, feedback

    bound = schema.BOUNDS[schema.TARGET]
    if bound.violated(price):
        raise fail(f"price {bound.describe()}", code=2)
    try:
        sent = feedback.submit(appraisal_id, price, actor=audit.cli_actor())
    except KeyError as exc:
        raise fail(f"no appraisal with id {appraisal_id} (ids are printed by `explain`)") from exc
    except feedback.FeedbackRefused as exc:
        raise fail(str(exc)) from exc
    console.print(
        literal(
            f"Expert price {sent['id']} kept as pending: ${price:,.0f} for appraisal {appraisal_id}"
            + (f" (flagged: {sent['flag']})" if sent["flag"] else "")
            + f". `appraiser feedback approve {sent['id']}` lets it teach the model."
        )
    )


class ReviewStatus(enum.StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


@feedback_app.command("list")
def feedback_list(
    status: Annotated[
        ReviewStatus | None, typer.Option(help="only these (default: all)")
    ] = ReviewStatus.pending,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    as_json: Json = False,
) -> None:
    """Experts' prices and their review status, oldest first (default: the pending queue)."""
    from appraiser import feedback

    found = feedback.listing(status.value if status else None, limit)
    if as_json:
        print(json.dumps(found, default=str))
        return
    if not found:
        console.print("No expert prices" + (f" {status.value}." if status else "."))
        return
    table = Table("id", "appraisal", "model (range)", "expert's price", "expert", "status", "flag")
    for f in found:
        table.add_row(
            str(f["id"]),
            literal(f["appraisal_id"]),
            f"${f['appraised_price']:,.0f} "
            f"(${f['price_low'] or 0:,.0f}-${f['price_high'] or 0:,.0f})",
            f"${f['price']:,.0f}",
            literal(f["expert"] or "(before review)"),
            literal(f["status"]),
            literal(f["flag"] or ""),
        )
    console.print(table)


def _review(feedback_id: int, approve: bool, note: str | None) -> None:
    """Approve or reject an expert's price as the shell's user (audited)."""
    from appraiser import audit, feedback

    try:
        done = feedback.review(feedback_id, approve=approve, actor=audit.cli_actor(), note=note)
    except (KeyError, feedback.FeedbackRefused) as exc:
        raise fail(str(exc.args[0])) from exc
    console.print(literal(f"Expert price {feedback_id} (${done['price']:,.0f}): {done['status']}."))


Note = Annotated[str | None, typer.Option(help="why, for the audit trail")]


@feedback_app.command("approve")
def feedback_approve(
    feedback_id: Annotated[int, typer.Argument(help="from `appraiser feedback list`")],
    note: Note = None,
) -> None:
    """Approve an expert's price: the next retrain learns from it."""
    _review(feedback_id, True, note)


@feedback_app.command("reject")
def feedback_reject(
    feedback_id: Annotated[int, typer.Argument(help="from `appraiser feedback list`")],
    note: Note = None,
) -> None:
    """Reject an expert's price: kept, never used."""
    _review(feedback_id, False, note)

"""The `appraiser` command: thin Typer commands over the same functions the API calls.

Laid out as the API's routers are: one module per command group, assembled here in the order
`appraiser --help` lists them. `render.py` holds what they print with, `options.py` the options
several share, `serve.py` the server's start-up. The commands import what they run inside
themselves, so that `appraiser predict` starts without the training stack.

| commands | module |
| --- | --- |
| train, evaluate, retrain | training.py |
| predict, explain | appraisals.py |
| ingest, rejected, batches | batches.py |
| models | versions.py |
| pipeline run, watch | pipeline.py |
| feedback | feedback.py |
| keys, audit | admin.py |
| monitor, export, retention, db | operations.py |
| market | market.py |
| serve | serve.py |
"""

from __future__ import annotations

import typer

from appraiser.cli import (
    admin,
    appraisals,
    batches,
    feedback,
    market,
    operations,
    pipeline,
    serve,
    training,
    versions,
)

app = typer.Typer(
    help="Diamond Appraiser: prices diamonds, says why, and keeps its model sharp.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(versions.models_app, name="models")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(batches.batches_app, name="batches")
app.add_typer(feedback.feedback_app, name="feedback")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(operations.db_app, name="db")

app.command()(training.train)
app.command()(appraisals.predict)
app.command(name="evaluate")(training.evaluate_cmd)
app.command()(batches.ingest)
app.command()(batches.rejected)
app.command()(training.retrain)
app.command("audit")(admin.audit_cmd)
app.command()(pipeline.watch)
app.command(name="explain")(appraisals.explain_cmd)
app.command()(serve.serve)
app.command()(operations.monitor)
app.command("market")(market.market_cmd)
app.command("export")(operations.export_cmd)
app.command("retention")(operations.retention_cmd)

__all__ = ["app"]

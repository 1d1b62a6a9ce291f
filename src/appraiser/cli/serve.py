"""`appraiser serve`: the API under uvicorn, with the metrics folder several workers share, the
JSON log, and the schema checked once before any worker starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from appraiser.cli.render import console, fail, literal


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="addresses of the gateway in front, whose X-Forwarded-For names the client "
            "(rate limits count per client); default: uvicorn's (127.0.0.1)"
        ),
    ] = None,
) -> None:
    """Serve the REST API (/docs) and the web page (/) with the champion model.

    Each process follows the registry: a newly promoted champion is served within
    APPRAISER_RELOAD_SECONDS, without a restart. Admin endpoints need APPRAISER_API_KEY.
    With several workers, /metrics sums all of them (Prometheus multiprocess mode, in a fresh
    temporary folder removed at exit). APPRAISER_LOG_FORMAT=json logs JSON lines, one per request.
    """
    import os
    import shutil
    import tempfile

    metrics_dir = None
    if workers > 1:  # before anything imports prometheus_client, here or in a worker
        metrics_dir = tempfile.mkdtemp(prefix="appraiser-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve(host, port, workers, access_log, forwarded_allow_ips)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


WORKER_START_SECONDS = 60  # `serve --workers N`: how long a worker may take to answer at first


def _serve(
    host: str, port: int, workers: int, access_log: bool, forwarded_allow_ips: str | None
) -> None:
    """Logging, the schema check and the champion's announcement, then uvicorn until stopped."""
    import logging.config

    import uvicorn
    from rich.text import Text

    from appraiser import champion as champions
    from appraiser import store
    from appraiser.config import settings

    log_config: dict[str, object] | None = None
    say: Callable[[Text], None] = console.print
    if settings().log_format == "json":
        from appraiser.api.request_log import json_log_config

        log_config = json_log_config(access_log)
        logging.config.dictConfig(log_config)
        log = logging.getLogger("appraiser.serve")

        def say(text: Text) -> None:
            log.info(text.plain)

    # No format we log shows the caller's file or line, so skip the stack walk logging makes for
    # every record (the logging HOWTO's "Optimization"): a tenth of a lone request's server time
    # went there with the access log on. (Workers of `--workers N` are fresh processes.)
    logging._srcfile = None
    try:
        store.ready()  # migrate once here (or check), not in every worker at the same moment
    except store.StoreOutdated as exc:
        raise fail(str(exc)) from exc
    champion = champions.current()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    say(
        literal(f"Serving model v{champion} on http://{shown}:{port}/ (API docs: /docs)")
        if champion
        else Text.assemble(
            ("No champion yet", "yellow"),
            ": appraisals answer 503 until one is trained (`appraiser train`); the server "
            "picks it up by itself.",
        )
    )
    if settings().api_key is None:
        say(Text("Admin endpoints are disabled: set APPRAISER_API_KEY to enable them."))
    uvicorn.run(
        "appraiser.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # JSON: the request lines come from the app (TimeRequests), which knows route and model
        access_log=access_log and log_config is None,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="info",
        log_config=log_config or uvicorn.config.LOGGING_CONFIG,
        # a worker answers the supervisor's pings only once its imports are done, which takes
        # over uvicorn's 5 s on a busy machine: it would be killed and replaced again and again
        timeout_worker_healthcheck=WORKER_START_SECONDS,
    )

"""`appraiser serve`: the API under uvicorn, with the metrics folder several workers share, the
JSON log, and the schema checked once before any worker starts."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Annotated, Any

import typer

from appraiser.cli.render import console, fail, literal


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
) -> None:
    """Serve the REST API (/docs) and the web page (/) with the champion model.

    Each process follows the registry: a newly promoted champion is served within
    APPRAISER_RELOAD_SECONDS, without a restart. Admin endpoints need APPRAISER_API_KEY.
    With several workers, /metrics sums all of them (Prometheus multiprocess mode, in a fresh
    temporary folder removed at exit), on APPRAISER_METRICS_PORT only. APPRAISER_LOG_FORMAT=json
    logs JSON lines, one per request. X-Forwarded-For is believed only from the proxies
    APPRAISER_TRUSTED_PROXIES names. Refuses to start with a bootstrap key under 24 characters.
    """
    import os
    import shutil
    import tempfile

    from appraiser.api.deps import make_limits
    from appraiser.config import settings

    cfg = settings()
    try:  # before anything starts: a setting no server may run with is said plainly
        cfg.check_serving()
        make_limits(cfg.rate_limit)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if cfg.metrics_port == port:
        raise fail(f"APPRAISER_METRICS_PORT={port}: give the metrics a port of their own")
    metrics_dir = None
    if workers > 1:  # before anything imports prometheus_client, here or in a worker
        metrics_dir = tempfile.mkdtemp(prefix="appraiser-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve(host, port, workers, access_log)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


WORKER_START_SECONDS = 60  # `serve --workers N`: how long a worker may take to answer at first


def _serve(host: str, port: int, workers: int, access_log: bool) -> None:
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
    trusted = settings().trusted_proxy_list
    config = uvicorn.Config(
        "appraiser.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # JSON: the request lines come from the app (TimeRequests), which knows route and model
        access_log=access_log and log_config is None,
        # X-Forwarded-For names the client only when a named proxy sent it (uvicorn would
        # otherwise believe any local process, and a forged header would buy a fresh bucket)
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
        log_level="info",
        log_config=log_config or uvicorn.config.LOGGING_CONFIG,
        # a worker answers the supervisor's pings only once its imports are done, which takes
        # over uvicorn's 5 s on a busy machine: it would be killed and replaced again and again
        timeout_worker_healthcheck=WORKER_START_SECONDS,
    )
    _run(config, _metrics_socket(uvicorn))


def _metrics_socket(uvicorn: Any) -> socket.socket | None:
    """The metrics port's listener (APPRAISER_METRICS_PORT), or None: the app answers /metrics
    on connections to it only (api.middleware.MetricsPort)."""
    from appraiser.config import settings

    cfg = settings()
    if cfg.metrics_port is None:
        return None
    # log_config None: this Config only binds, and must not reconfigure logging
    bind = uvicorn.Config(None, host=cfg.metrics_host, port=cfg.metrics_port, log_config=None)
    return bind.bind_socket()


def _run(config: Any, metrics: socket.socket | None) -> None:
    """What uvicorn.run does, with the metrics listener beside the API's (uvicorn.run binds
    only one socket); every worker accepts on both."""
    from uvicorn.server import Server
    from uvicorn.supervisors import Multiprocess

    sockets = [config.bind_socket(), *([metrics] if metrics else [])]
    server = Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
            return
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        return
    if not server.started:
        raise typer.Exit(3)  # uvicorn's STARTUP_FAILURE: it has logged why

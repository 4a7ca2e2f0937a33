"""``caracal serve``: the HTTP API and the LLM gateway over the home, until Ctrl-C.

Host, port, worker processes and body limit come from ``[server]`` in ``config.toml`` unless given here.
The admin key is made by ``caracal init`` (in ``keys/admin.key``); a home initialised before API keys existed
gets one now, and the command says where it is. On shutdown in-flight requests finish, queued ledger
operations are written, and the budget snapshot and a checkpoint are saved (in every worker).

With ``--workers N`` (N > 1) this process opens the home once (the ledger is checked, the admin key made,
the snapshot saved so that the workers resume from it), prints where it serves, closes the home and
supervises N worker processes, each with its own service over the home (:mod:`caracal.server.runner`).
"""

from __future__ import annotations

import click

from caracal.cli.render import handle_errors
from caracal.config import MAX_WORKERS, caracal_home


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on (default: server.host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port (default: server.port, 8787).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=None,
    help="Processes serving the port, all enforcing against this home (default: server.workers, 1).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@handle_errors
def serve_command(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Serve the REST API (/api/v1), the gateway (/v1/chat/completions, /v1/embeddings, /v1/messages),
    /healthz, /metrics and the OpenAPI document (/docs)."""
    from caracal.server.app import create_app
    from caracal.server.runner import serve, serve_workers
    from caracal.server.service import Service

    home = caracal_home()
    service = Service(home)
    try:
        settings = service.home.settings
        key_file = service.home.admin_key_path
        if service.keys.ensure_admin_key(key_file) is not None:
            click.echo(f"created the admin API key in {key_file} (owner-only)", err=True)
    except BaseException:
        service.close()
        raise
    listen_host = host or settings.host
    listen_port = port or settings.port
    processes = workers or settings.workers
    where = f"http://{listen_host}:{listen_port}"
    if processes == 1:
        app = create_app(service, own_service=True)
        click.echo(f"Caracal {home} serving on {where} (docs at /docs, dashboard at /ui)", err=True)
        serve(app, listen_host, listen_port, log_level)
        return
    service.close()  # each worker opens its own; they resume from the snapshot this one just saved
    click.echo(
        f"Caracal {home} serving on {where} with {processes} workers (docs at /docs, dashboard at /ui)",
        err=True,
    )
    serve_workers(listen_host, listen_port, processes, log_level)

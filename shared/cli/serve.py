"""`serve`: the skill on a local port, like `func start`, through the function entry points."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared.cli.common import servable
from shared.core.settings import Settings


def _bind_error(exc: BaseException, host: str, port: int) -> str:
    """One line naming what went wrong binding host:port and what to do instead."""
    import errno
    import socket

    if isinstance(exc, OverflowError) or not 0 <= port <= 65535:
        return f"port {port} is out of range; choose one from 1 to 65535 with --port N, or --port 0 for a free one"
    if isinstance(exc, socket.gaierror):
        return f"host {host!r} does not resolve to an address of this machine; use --host 127.0.0.1 (or 0.0.0.0)"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        also = " (func start's port too)" if port == 7071 else ""
        return f"port {port} on {host} is already in use{also}; choose another with --port N (0 for a free one)"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to listen on {host}:{port}; use a port above 1023 with --port N, or --port 0"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; use --host 127.0.0.1 (or 0.0.0.0)"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
    return f"cannot listen on {host}:{port} ({reason}); try --port 0 for a free port or another --host"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import logging
    import threading

    from shared.cli.devserver import SkillServer, answers, make_server
    from shared.core.errors import ModelNotReady
    from shared.core.settings import LOCAL_SETTINGS
    from shared.skill.service import SkillService, reset_service

    applied: list[str] = getattr(args, "local_settings", [])  # read by shared.cli.main, as every command does
    if args.model:
        served = servable(Path(args.model), settings)
        settings = dataclasses.replace(settings, model_dir=served, blob_connection_string=None, blob_account_url=None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = make_server(settings, args.host, args.port)
    except (OSError, OverflowError) as exc:
        sys.stderr.write(f"error: {_bind_error(exc, args.host, args.port)}\n")
        return 1
    reset_service(SkillService(settings))
    host, port = server.server_address[:2]
    from shared.skill.service import service

    try:
        service().holder.current()
    except ModelNotReady as exc:
        sys.stderr.write(f"warning: {exc}; answering 503 until it loads\n")
    status = service().holder.status()
    values = f"{len(applied)} value{'s' if len(applied) != 1 else ''}"
    source = f"settings from {LOCAL_SETTINGS.name} ({values}); " if applied else ""
    sys.stderr.write(
        f"{source}serving {status['source']} on http://{host!s}:{port}/api/classify (POST) and /api/health (GET)"
        f"{'; function key required' if settings.api_key else ''}; a page to try images at http://{host!s}:{port}/\n"
    )
    sys.stderr.flush()
    if isinstance(server, SkillServer):
        url = f"http://[{host!s}]:{port}" if ":" in str(host) else f"http://{host!s}:{port}"

        def announce() -> None:
            # One line on stdout once the server has answered a request: a script waits for it (README's tour).
            if answers(server):
                print(f"ready on {url}", flush=True)

        threading.Thread(target=announce, name="ready-probe", daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    serve = commands.add_parser("serve", help="serve /api/classify and /api/health locally, as the Functions host does")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7071, help="port (default 7071, as func start; 0 picks a free one)")
    serve.add_argument(
        "--model", metavar="PATH", help="serve this bundle or AutoML run folder instead of the store or the sample"
    )
    serve.set_defaults(handler=cmd_serve)

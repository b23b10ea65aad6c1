"""Operator commands: serve the HTTP API, delete one user's data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clio_stream.cli.options import add_stream_args, service_settings
from clio_stream.settings import ClioSettings


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the HTTP API and dashboard with uvicorn on ``web_host:web_port`` (settings, keys from env/TOML)."""
    from api.app import serve

    overrides = {}
    for flag, name in (("host", "web_host"), ("port", "web_port"), ("workers", "api_workers")):
        value = vars(args).get(flag)
        if value:
            overrides[name] = value
            # Worker processes build their own app from the environment: hand the overrides down.
            os.environ[f"CLIO_{name.upper()}"] = str(value)
    serve(ClioSettings().with_overrides(**overrides))
    return 0


def cmd_delete_user(args: argparse.Namespace) -> int:
    """Delete one user's data: Qdrant now, the published versions here when writable (else by the scheduler)."""
    from clio_stream.privacy.deletion import delete_user
    from clio_stream.storage.store import QdrantStore

    settings = service_settings(args)
    dirs = [Path(d) for d in args.batch_dir or []]
    if args.no_store:
        report = delete_user(args.user_id, settings, store=None, batch_dirs=dirs)
    else:
        with QdrantStore.from_settings(settings) as store:
            report = delete_user(args.user_id, settings, store=store, batch_dirs=dirs, wait=not args.no_wait)
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")  # counts only, never the user's data
    return 0


def add_api_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("api", help="serve the HTTP API and dashboard (uvicorn on CLIO_WEB_HOST:CLIO_WEB_PORT)")
    sp.add_argument("--host", help="bind address (default: settings web_host)")
    sp.add_argument("--port", type=int, help="port (default: settings web_port, 8421)")
    sp.add_argument("--workers", type=int, help="uvicorn worker processes (default: settings api_workers)")
    sp.set_defaults(func=cmd_api)


def add_delete_user_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("delete-user", help="delete one user's data: Qdrant points, published versions, caches")
    sp.add_argument("user_id", help="the user id as sent with the conversations")
    sp.add_argument("--batch-dir", action="append",
                    help="also scrub this run_clio output folder (result.json, site/, checkpoints/); repeatable")
    sp.add_argument("--no-store", action="store_true", help="skip Qdrant (a batch-only installation)")
    sp.add_argument("--no-wait", action="store_true",
                    help="record the request, delete the points and scrub once, but leave the final sweep "
                         "(after deletion_sweep_delay_s) to the scheduler")
    add_stream_args(sp)
    sp.set_defaults(func=cmd_delete_user)

"""``samflow serve DST``: the Ray Serve app over a run's indexes and models."""

from __future__ import annotations

import argparse
import os


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="HTTP search / embed / segment over a run (Ray Serve)")
    serve.add_argument("dst")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from samflow.serve.app import TOKEN_ENV, serve_forever

    serve_forever(args.dst, args.host, args.port, token=os.environ.get(TOKEN_ENV) or None)
    return 0

"""``personas serve``: the decision-time HTTP service over the latest complete run (no JVM)."""

from __future__ import annotations

import argparse

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.errors import DependencyError, UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="answer persona queries over HTTP from the latest complete run",
        description="A long-lived HTTP service (POST /query, GET /customers/{id}/personas, POST /cold-start, "
                    "POST /rerank, GET /health) reading the published Delta tables with delta-rs, no Spark. "
                    "It switches to each new complete run atomically and stops serving forgotten "
                    "customers within seconds. Host, port and workers default to the config's serving section.",
    )
    add_common_options(parser)
    parser.add_argument("--host", default=None, help="address to bind (default serving.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default serving.port, 8080)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default serving.workers, 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    config = load_app_config(args)
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
               if v is not None}
    if changes.get("workers", 1) < 1 or not 0 <= changes.get("port", 0) <= 65535:
        raise UsageError("personas serve: --workers must be >= 1 and --port within 0..65535")
    config = config.replace("serving", **changes)
    try:
        import deltalake  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"personas serve needs {exc.name}: pip install 'personas[serve]' "
                              "(or -r requirements/local.txt)") from exc
    from persona_lib.serving import serve

    return serve(config, conf_path=args.conf)

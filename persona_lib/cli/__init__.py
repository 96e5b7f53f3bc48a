"""The ``personas`` command line: one subcommand per job.

Contract: logs and progress go to stderr, the result to stdout, whose last line is one JSON
object (or array, for ``query``). Exit codes: 0 success, 2 usage, 3 bad input or config,
4 a missing dependency (Java, Maven, JARs, a model), 1 anything else.

Each subcommand lives in its own module here and exposes ``add_parser(subparsers)``, which
registers the parser and sets ``handler(args) -> result``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from typing import Any, Optional, Sequence

from persona_lib.errors import PersonasError, UsageError

SUBCOMMANDS = ("ingest", "synth", "label", "propagate", "run", "query", "serve", "forget", "evaluate", "bench")

log = logging.getLogger("personas")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors: keep that code
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="personas", description="GPLR customer personas on Spark and Delta.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"persona_lib.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"persona_lib.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default=None, metavar="FILE",
                        help="configuration YAML (default: conf/local.yaml)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="where local state (Delta tables, MLflow store, checkpoints) goes; "
                             "overrides the config's workdir (default ./work)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")


def load_app_config(args: argparse.Namespace):
    from persona_lib.config import load_config

    return load_config(args.conf, workdir=args.workdir)


def emit(result: Any) -> None:
    """The result: one JSON line on stdout (the last line a script reads)."""
    sys.stdout.write(json.dumps(result, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        # spark-submit merges the driver's stderr into its stdout (PythonRunner), so nothing may
        # log after the result line: py4j logs its connection shut-down at INFO on exit.
        logging.getLogger("py4j").setLevel(logging.WARNING)
        result = args.handler(args)
    except PersonasError as exc:
        print(f"personas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("personas: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the last resort: a trace for the bug report
        traceback.print_exc(file=sys.stderr)
        print(f"personas: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        emit(result)
    return 0

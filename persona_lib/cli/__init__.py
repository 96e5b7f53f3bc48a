"""The ``personas`` command line: one subcommand per job.

Contract: logs and progress go to stderr, the result to stdout, whose last line is one JSON
object. Exit codes: 0 success, 2 usage, 3 bad input or config,
4 a missing dependency (Java, Maven, JARs, a model), 5 another job holds the writer lock (or
won a concurrent Delta commit), 1 anything else.

Commands that write (``add_common_options(parser, writer=True)``) run under the work dir's
writer lock (``persona_lib.lock``), taken before Spark or MLflow start.

Each subcommand lives in its own module here and exposes ``add_parser(subparsers)``, which
registers the parser and sets ``handler(args) -> result``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Optional, Sequence

from persona_lib import __version__
from persona_lib.errors import PersonasError, UsageError

SUBCOMMANDS = ("ingest", "synth", "label", "override", "propagate", "run", "query", "sql", "serve", "forget", "evaluate", "bench", "verify",
               "taxonomy")

# Delta's optimistic-concurrency conflicts: another writer committed first.
_CONCURRENT_WRITE_ERRORS = (
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException", "MetadataChangedException", "ProtocolChangedException",
    "ConcurrentWriteException",
)

log = logging.getLogger("personas")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors: keep that code
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="personas", description="GPLR customer personas on Spark and Delta.")
    parser.add_argument("--version", action="version", version=f"personas {__version__}")
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


def add_common_options(parser: argparse.ArgumentParser, writer: bool = False) -> None:
    parser.add_argument("--conf", default=None, metavar="FILE",
                        help="configuration YAML (default: conf/local.yaml)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="where local state (Delta tables, MLflow store, checkpoints) goes; "
                             "overrides the config's workdir (default ./work)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    # One bundle target per schema: the job passes its target's catalog and schema.
    parser.add_argument("--catalog", default=None, metavar="NAME",
                        help="Unity Catalog catalog for every table, volume path and the registered "
                             "model (with --schema); overrides the config")
    parser.add_argument("--schema", default=None, metavar="NAME",
                        help="Unity Catalog schema (with --catalog): tables become CATALOG.SCHEMA.<name>")
    if writer:
        parser.add_argument("--wait", action="store_true",
                            help="if another job holds the work dir's writer lock, wait for it "
                                 "(default: exit at once with code 5)")
        parser.set_defaults(writer=True)


class Outcome:
    """A handler's result with an exit code other than 0 (``personas verify`` finding violations)."""

    def __init__(self, result: Any, exit_code: int) -> None:
        self.result = result
        self.exit_code = exit_code


def load_app_config(args: argparse.Namespace):
    from persona_lib.config import catalog_schema_problem, load_config

    catalog, schema = getattr(args, "catalog", None), getattr(args, "schema", None)
    problem = catalog_schema_problem(catalog, schema)
    if problem:
        raise UsageError(problem)
    return load_config(args.conf, workdir=args.workdir, catalog=catalog, schema=schema)


def with_options(config, args: argparse.Namespace, options: dict[str, tuple[str, str]]):
    """``config`` with every command-line option given (not None) set at its config key:
    ``{"budget": ("sampling", "budget")}`` sets ``sampling.budget`` from ``--budget``."""
    for option, (section, key) in options.items():
        value = getattr(args, option)
        if value is not None:
            config = config.replace(section, **{key: value})
    return config


# Python warnings of our dependencies that are not about anything a user can act on.
_IGNORED_WARNINGS = (
    # MLflow's schema inference, also used for dataset records, where missing values do not matter.
    ("Hint: Inferred schema contains integer column", "mlflow"),
    # PySpark, for a UDF whose type hints are not pandas types.
    ("Cannot infer the eval type from type hints", "pyspark"),
)
# Log messages of our dependencies' loggers, at WARNING or above, that are not problems.
_IGNORED_LOG_MESSAGES = {
    # Once per machine, on the first chart.
    "matplotlib.font_manager": "building the font cache",
}


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def configure_console(quiet: bool = False) -> None:
    """The one place that decides what reaches stderr: our ``personas.*`` lines (INFO, or
    WARNING with --quiet), and from the libraries only warnings and errors.

    Spark's JVM log is set by persona_lib/log4j2.properties (persona_lib.spark). MLflow reads
    its settings from the environment when it is imported, so they are set here, before any
    handler imports it; a variable the user set already wins.
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # MLflow logs its database set-up and model validation at INFO, and draws a progress bar
    # for every artifact download (loading or registering a model).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "mlflow" in sys.modules:  # imported already (main() called in-process): set it directly
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # spark-submit merges the driver's stderr into its stdout (PythonRunner), so nothing may
    # log after the result line: py4j logs its connection shut-down at INFO on exit.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # A failed SQL statement reaches the user as one InputError line; PySpark also logs it
    # as a kilobytes-long JSON record with the JVM stack.
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    for name, fragment in _IGNORED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))
    for message, module in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


def emit(result: Any) -> None:
    """The result: one JSON line on stdout (the last line a script reads)."""
    sys.stdout.write(json.dumps(result, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        configure_console(quiet=getattr(args, "quiet", False))
        result = _run_handler(args)
    except PersonasError as exc:
        print(f"personas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("personas: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the last resort: a trace for the bug report
        conflict = _concurrent_write_error(exc)
        if conflict:
            print(f"personas: error: another job committed to the same Delta table first ({conflict}); "
                  "nothing of this job's failed commit was written. Run it again (with --wait if a "
                  "job is still running).", file=sys.stderr)
            return 5
        traceback.print_exc(file=sys.stderr)
        print(f"personas: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Outcome):
        if result.result is not None:
            emit(result.result)
        return result.exit_code
    if result is not None:
        emit(result)
    return 0


def _run_handler(args: argparse.Namespace) -> Any:
    if not getattr(args, "writer", False):
        return args.handler(args)
    from persona_lib.lock import writer_lock

    with writer_lock(load_app_config(args), args.command, wait=args.wait):
        return args.handler(args)


def _concurrent_write_error(exc: BaseException) -> Optional[str]:
    """The name of the Delta conflict behind ``exc`` (also when py4j wraps it), else None."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{type(current).__name__}: {current}"
        for name in _CONCURRENT_WRITE_ERRORS:
            if name in text:
                return name
        current = current.__cause__ or current.__context__
    return None
def console_main() -> None:
    """The ``personas`` console script: the exit code as the process status.

    A Databricks ``python_wheel_task`` calls the entry point and ignores what it returns, so a
    failure must raise SystemExit for the task to fail; success returns normally.
    """
    code = main()
    if code:
        raise SystemExit(code)

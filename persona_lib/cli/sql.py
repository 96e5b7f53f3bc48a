"""``personas sql``: a SQL query against a work dir's tables and current_* views."""

from __future__ import annotations

import argparse
import json

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.errors import InputError, UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sql", help="run a SQL query on the published tables and current_* views",
        description="Runs one SQL statement in the schema that holds the tables (bare names: "
                    "current_customer_personas, customer_personas, runs, ...; docs/sql.md has "
                    "recipes). Prints the rows, then one JSON line {columns, rows, truncated}.",
    )
    add_common_options(parser)
    parser.add_argument("statement", metavar="SQL", help="the SQL statement")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="bind the :NAME marker; VALUE is read as JSON (42, true, \"text\"), "
                             "else taken as text (repeatable)")
    parser.add_argument("--max-rows", type=int, default=100, help="rows to print (default 100)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table: aligned rows before the JSON line; json: the JSON line only")
    parser.set_defaults(handler=run)


def parameters(items: list[str]) -> dict:
    """--param NAME=VALUE items as the ``args`` of spark.sql."""
    bound = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        try:
            bound[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            bound[name.strip()] = value
    return bound


def format_table(columns: list[str], rows: list[list]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def run(args: argparse.Namespace) -> dict:
    if args.max_rows < 0:
        raise UsageError("--max-rows must be 0 or more")
    bound = parameters(args.param)
    config = load_app_config(args)
    from pyspark.errors import AnalysisException, ParseException

    from persona_lib.publishing import register_views
    from persona_lib.spark import get_spark

    spark = get_spark(config)
    register_views(spark, config)
    try:
        frame = spark.sql(args.statement, args=bound or None)
        rows = [list(r.asDict(recursive=True).values()) for r in frame.limit(args.max_rows + 1).collect()]
    except (AnalysisException, ParseException) as exc:
        raise InputError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    truncated = len(rows) > args.max_rows
    rows = rows[:args.max_rows]
    if args.format == "table":
        print(format_table(frame.columns, rows))
    return {"columns": frame.columns, "rows": rows, "truncated": truncated}

"""``personas query``: a customer's personas, best first, in the product page's shape."""

from __future__ import annotations

import argparse

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.cli.sql import format_table
from persona_lib.errors import UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "query", help="a customer's personas (or a new shopper's, from products)",
        description="Prints one JSON object: found (false when neither the customer nor any of "
                    "the products is known to the latest complete run), answered_by, "
                    "customer_found, unknown_products, and rows {\"$p\", \"$why\", \"persona\"}, "
                    "best first. A customer the tables do not know is scored by the cold-start "
                    "model from --products. --format table prints the rows rounded first.",
    )
    add_common_options(parser)
    parser.add_argument("--customer", default=None, metavar="ID", help="customer id")
    parser.add_argument("--products", default=None, metavar="ID,ID,...",
                        help="products of a new shopper (comma-separated product ids)")
    parser.add_argument("--limit", type=int, default=3, help="rows to return (default 3)")
    parser.add_argument("--query", default=None, metavar="JSON",
                        help="a full query object instead of --customer/--products")
    parser.add_argument("--format", choices=("json", "table"), default="json",
                        help="table: the rows as a text table with rounded values before the JSON "
                             "line; json: the JSON line only (default)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.query import answer, query_from_json, validate
    from persona_lib.spark import get_spark

    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    if args.query:
        query = query_from_json(args.query)
    else:
        where = {}
        if args.customer:
            where["customer_id"] = args.customer
        if args.products:
            where["products"] = [p.strip() for p in args.products.split(",") if p.strip()]
        if not where:
            raise UsageError("give --customer, --products or --query")
        query = {"from": "customer_purchases", "where": where, "predict": "persona",
                 "select": ["$p", "$why", "persona"], "limit": args.limit}
    validate(query)  # a malformed query fails before Spark starts
    config = load_app_config(args)
    result = answer(query, get_spark(config), config)
    if args.format == "table":
        print(format_answer(result))
    return result


def format_answer(result: dict) -> str:
    """The rows as a small text table: probabilities and scores to 3 decimals, the evidence as
    its first product titles; or one line saying what was not found."""
    if not result["found"]:
        unknown = []
        if result["customer_found"] is False:
            unknown.append(f"customer {result['customer_id']}")
        if result["unknown_products"]:
            unknown.append("products " + ", ".join(result["unknown_products"]))
        return "not found: " + (" and ".join(unknown) or "nothing asked") + " (latest complete run)"
    columns = [c for c in result["rows"][0] if c != "$why"]
    has_why = "$why" in result["rows"][0]
    header = columns + (["why"] if has_why else [])
    rows = [[_cell(row[c]) for c in columns] + ([_why(row["$why"])] if has_why else []) for row in result["rows"]]
    return format_table(header, rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _why(why) -> str:
    """The first two evidence products (title, else id) of a row's $why."""
    products = (why or {}).get("products") or []
    names = [p.get("title") or p.get("product_id") for p in products[:2]]
    return "; ".join(n for n in names if n) or "-"

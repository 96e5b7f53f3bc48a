"""``personas query``: a customer's personas, best first, in the product page's shape."""

from __future__ import annotations

import argparse

from persona_lib.cli import add_common_options, load_app_config


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "query", help="a customer's personas (or a new shopper's, from products)",
        description="Prints one JSON array of rows {\"$p\", \"$why\", \"persona\"}, best first, read "
                    "from the latest complete run. A customer the tables do not know is scored by "
                    "the cold-start model from --products.",
    )
    add_common_options(parser)
    parser.add_argument("--customer", default=None, metavar="ID", help="customer id")
    parser.add_argument("--products", default=None, metavar="ID,ID,...",
                        help="products of a new shopper (comma-separated product ids)")
    parser.add_argument("--limit", type=int, default=3, help="rows to return (default 3)")
    parser.add_argument("--query", default=None, metavar="JSON",
                        help="a full query object instead of --customer/--products")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> list:
    from persona_lib.query import predict, query_from_json
    from persona_lib.spark import get_spark

    if args.query:
        query = query_from_json(args.query)
    else:
        where = {}
        if args.customer:
            where["customer_id"] = args.customer
        if args.products:
            where["products"] = [p.strip() for p in args.products.split(",") if p.strip()]
        query = {"from": "customer_purchases", "where": where, "predict": "persona",
                 "select": ["$p", "$why", "persona"], "limit": args.limit}
    config = load_app_config(args)
    return predict(query, get_spark(config), config)

"""``python -m examples.linkedin_posts``: run the demo against PostgreSQL.

The database URL comes from ``--database-url``, else the
``LINKEDIN_POSTS_DATABASE_URL`` environment variable, else
``postgresql://postgres@127.0.0.1:5432/test``. Exit status: 0 when the demo
ran, 2 when the database cannot be reached or an argument is bad.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from iogate.errors import DatabaseConnectionError, InvalidRequestError

from .demo import run_demo
from .service import DEFAULT_DATABASE_URL

ENV_DATABASE_URL = "LINKEDIN_POSTS_DATABASE_URL"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.linkedin_posts",
        description="Seed 002's LinkedIn-posts service on iogate: a short demo.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(ENV_DATABASE_URL, DEFAULT_DATABASE_URL),
        help=f"PostgreSQL URL (default: ${ENV_DATABASE_URL} or {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--table",
        default=None,
        help="posts table to use (default: a new uniquely named table, dropped afterwards)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the table and its posts")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda line: None) if args.json else print
    try:
        summary = asyncio.run(
            run_demo(args.database_url, table=args.table, keep=args.keep, say=say)
        )
    except (DatabaseConnectionError, InvalidRequestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print()
    print("summary")
    print(f"  posts created:   {summary['posts_created']} (1 deleted by the demo)")
    print(f"  notifications:   {summary['notifications_received']} received by the fake upstream")
    print(f"  table:           {summary['table']} (dropped: {summary['table_dropped']})")
    for name, entry in summary["stats"].items():
        errors = ", ".join(f"{k}={v}" for k, v in entry["errors"].items()) or "none"
        print(f"  {name:<17}{entry['operations']:>4} operations, errors: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

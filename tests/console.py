"""What a ``personas`` command prints on stderr: our own lines against everyone else's."""

from __future__ import annotations

import re

# The CLI's log format (persona_lib.cli.configure_console) for a ``personas`` or
# ``personas.<module>`` logger, and the CLI's own "personas: error: ..." lines.
OUR_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ personas(\.[\w.]+)?: |personas: )")
# The bar: at most this many lines per command from Spark, MLflow, the JVM, ...
MAX_FOREIGN_LINES = 3


def foreign_lines(stderr: str) -> list[str]:
    """The stderr lines that do not come from our ``personas.*`` loggers or the CLI itself."""
    return [line for line in stderr.splitlines() if line.strip() and not OUR_LINE.match(line)]


def assert_quiet(stderr: str) -> None:
    foreign = foreign_lines(stderr)
    assert len(foreign) <= MAX_FOREIGN_LINES, (
        f"{len(foreign)} stderr lines not from personas loggers:\n" + "\n".join(line[:300] for line in foreign))

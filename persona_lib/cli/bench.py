"""``personas bench <name> [args...]``: run ``bench/<name>.py`` from a source checkout.

The benchmarks live next to the package in the repository, not in the wheel: from a wheel
install there is no ``bench/`` folder and the command says so (exit code 4). Everything after
the name goes to the benchmark unchanged; the benchmark's own stdout (its table and its last
JSON line) passes through, and its exit code becomes this command's.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Optional

from persona_lib.config import REPO_ROOT
from persona_lib.errors import DependencyError, PersonasError, UsageError

log = logging.getLogger("personas.bench")

BENCH_DIR = REPO_ROOT / "bench"


class BenchFailed(PersonasError):
    """The benchmark process failed: its exit code is ours, so a scheduler sees the same code."""

    def __init__(self, name: str, exit_code: int) -> None:
        super().__init__(f"bench/{name}.py exited with code {exit_code} (its stderr above says why)")
        # Killed by a signal (negative code): not one of ours, so 1, "anything else".
        self.exit_code = exit_code if exit_code > 0 else 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark of bench/ (source checkout only)",
        description="Run bench/<NAME>.py with this interpreter from the repository root; every "
                    "argument after NAME is passed to the benchmark (e.g. `personas bench "
                    "propagation --quick`). Without NAME, lists the benchmarks. Needs a source "
                    "checkout: a wheel install has no bench/ folder (exit code 4).",
    )
    parser.add_argument("name", nargs="?", default=None, metavar="NAME",
                        help="the benchmark: the file name in bench/ without .py")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="arguments for the benchmark (see `personas bench NAME --help`)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.set_defaults(handler=run)


def available(bench_dir: Optional[Path] = None) -> list[str]:
    bench_dir = bench_dir or BENCH_DIR
    if not bench_dir.is_dir():
        raise DependencyError(
            f"no bench/ folder at {bench_dir}: the benchmarks ship with the source, not the wheel; "
            "clone the repository and run `personas bench` from its .venv")
    return sorted(p.stem for p in bench_dir.glob("*.py") if not p.name.startswith("_"))


def run(args: argparse.Namespace) -> Optional[dict]:
    names = available()
    if args.name is None:
        return {"benchmarks": names}
    if args.name not in names:
        raise UsageError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    script = BENCH_DIR / f"{args.name}.py"
    command = [sys.executable, str(script), *args.bench_args]
    log.info("running %s", " ".join(command))
    # cwd = the checkout, so the benchmarks' relative paths (data/, conf/) resolve.
    completed = subprocess.run(command, cwd=str(REPO_ROOT), check=False)
    if completed.returncode != 0:
        raise BenchFailed(args.name, completed.returncode)
    log.info("bench/%s.py finished", args.name)
    # The benchmark printed its own result line; nothing more goes to stdout.
    return None

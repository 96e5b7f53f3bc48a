"""The ``personas`` command run inside the test process, on the suite's shared Spark session.

A ``personas`` subprocess starts a JVM and warms Spark's and Delta's classes again: 15-20 s
before the command does anything, against about a second in the warm session. Tests that
check what a command does (its exit code, its stdout JSON, the error naming a file or field,
the tables it writes) call ``cli.main`` here instead, through the same argument parsing,
console set-up, handlers and error handling. What only a process can show stays on
subprocesses: the JVM's and the libraries' own stderr lines (tests/test_console.py), two
jobs at once and a killed job (tests/test_faults_ops.py), spark-submit and the console
script itself (tests/test_cli.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from persona_lib import cli


def _set_variable(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def _environment(changes: Mapping[str, Optional[str]]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None removes a variable), restored afterwards."""
    before = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            _set_variable(name, value)
        yield
    finally:
        for name, value in before.items():
            _set_variable(name, value)


@contextlib.contextmanager
def _own_console() -> Iterator[None]:
    """The root logger as a fresh process has it, so that ``cli.configure_console`` installs
    the command's handler (on the redirected stderr) as it does in a process; pytest's
    handlers and the root level come back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = handlers
        root.setLevel(level)


def run_personas(*args: str, env: Optional[Mapping[str, Optional[str]]] = None,
                 cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``personas *args`` in this process: (args, exit code, stdout, stderr) as a subprocess
    would give them, with ``env`` changes and ``cwd`` applied for the command's duration."""
    argv: Sequence[str] = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment(env or {}))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(_own_console())
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = cli.main(list(argv))
    return subprocess.CompletedProcess(["personas", *argv], code, out.getvalue(), err.getvalue())

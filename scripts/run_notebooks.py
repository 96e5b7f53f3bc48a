"""Execute the notebooks of notebooks/ (Databricks source-format .py files) with nbclient.

    .venv/bin/python scripts/run_notebooks.py [--param NAME=VALUE ...] [--out DIR] [NOTEBOOK ...]

The notebooks are stored as Databricks exports them (``# Databricks notebook source``, cells
cut by ``# COMMAND ----------``, markdown as ``# MAGIC %md`` lines), so a workspace imports
them as they are; ``read_notebook`` converts one to an nbformat notebook, because the pinned
jupytext has no Databricks format. The cell whose first line is ``# Parameters`` holds the
widgets; a cell that assigns the given values is inserted after it (papermill's convention), so ``--param WORKDIR='"/tmp/x"'`` points a
notebook at a work directory. Values are Python literals. The kernel is this interpreter's
(ipykernel), the working directory the repository root. A failing cell stops the notebook
and the script exits 1 naming the cell; ``--out`` keeps the executed notebooks (.ipynb with
outputs) for reading. Without NOTEBOOK, runs every notebook in notebooks/, in NOTEBOOKS order.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# The order matters where work dirs are shared: the explorer builds on the quickstart's run.
NOTEBOOKS = ("quickstart.py", "persona_explorer.py", "evaluation.py")
PARAMETERS_TAG = "parameters"
DATABRICKS_HEADER = "# Databricks notebook source"
COMMAND_SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
PARAMETERS_MARKER = "# Parameters"


def from_databricks_source(text: str):
    """An nbformat notebook from a Databricks source-format file's text.

    ``# MAGIC %md`` cells become markdown cells (the ``# MAGIC`` prefix dropped); the code cell
    starting with ``# Parameters`` is tagged ``parameters``; every other cell is code.
    """
    import nbformat

    lines = text.splitlines()
    if not lines or lines[0].strip() != DATABRICKS_HEADER:
        raise ValueError(f"not a Databricks notebook: the first line must be {DATABRICKS_HEADER!r}")
    chunks, current = [], []
    for line in lines[1:]:
        if line.strip() == COMMAND_SEPARATOR:
            chunks.append(current)
            current = []
        else:
            current.append(line)
    chunks.append(current)
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for chunk in chunks:
        source = "\n".join(chunk).strip("\n")
        if not source:
            continue
        body = source.splitlines()
        if body[0].strip() == f"{MAGIC} %md":
            markdown = [line[len(MAGIC):].removeprefix(" ") for line in body[1:]]
            notebook.cells.append(nbformat.v4.new_markdown_cell("\n".join(markdown)))
        elif body[0].strip() == PARAMETERS_MARKER:
            notebook.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": [PARAMETERS_TAG]}))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(source))
    return notebook


def read_notebook(path: Path):
    return from_databricks_source(Path(path).read_text(encoding="utf-8"))


def parameter_cell_source(parameters: Mapping[str, Any]) -> str:
    return "# Parameters injected by scripts/run_notebooks.py\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items())


def with_parameters(notebook, parameters: Mapping[str, Any]):
    """The notebook with a cell assigning ``parameters`` after its ``parameters`` cell."""
    import nbformat

    tagged = [i for i, cell in enumerate(notebook.cells)
              if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    declared = set()
    for node in ast.walk(ast.parse(notebook.cells[tagged[0]].source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            declared.add(node.id)
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}")
    injected = nbformat.v4.new_code_cell(parameter_cell_source(parameters),
                                         metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, injected)
    return notebook


def run_notebook(path: Path, parameters: Mapping[str, Any], timeout_s: int = 600,
                 out_dir: Optional[Path] = None):
    """Execute one notebook; raises nbclient's CellExecutionError on the first failing cell."""
    from nbclient import NotebookClient

    notebook = with_parameters(read_notebook(path), parameters)
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT)}})
    try:
        client.execute()
    finally:
        if out_dir is not None:
            import nbformat

            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, out_dir / f"{path.stem}.ipynb")
    return notebook


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter, VALUE a Python literal (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write the executed notebooks here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    parameters = {}
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            parameters[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--param {item}: VALUE must be a Python literal (quote strings)")
    paths = args.notebooks or [NOTEBOOK_DIR / name for name in NOTEBOOKS]
    from nbclient.exceptions import CellExecutionError

    for path in paths:
        print(f"run_notebooks: {path}", file=sys.stderr)
        try:
            run_notebook(path, parameters, args.timeout, args.out)
        except CellExecutionError as exc:
            print(f"run_notebooks: {path} failed:\n{exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

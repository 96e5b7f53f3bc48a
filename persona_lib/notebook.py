"""What the notebooks in notebooks/ share (Jupyter, Databricks)."""

from __future__ import annotations

import json


def show_figure(figure) -> None:
    """Display a pyplot figure as a PNG and close it. Rendering to bytes works under any
    matplotlib backend: a library that switched pyplot to Agg would make ``plt.show()`` a no-op."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    display(Image(buffer.getvalue()))


def widget(name: str, default):
    """A notebook parameter: a Databricks widget where ``dbutils`` exists, else ``default``.

    Widgets hold text, so a non-string default is shown as JSON and the widget's text is read
    back as JSON (``true``, ``0.3``, ``["du"]``, ``null``); a string default is taken as typed.
    Locally (Jupyter, scripts/run_notebooks.py) there is no widget: the default applies and the
    runner overrides it by assigning the variable after the parameters cell.
    """
    dbutils = _dbutils()
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default if isinstance(default, str) else json.dumps(default))
    return parse_widget(name, dbutils.widgets.get(name), default)


def parse_widget(name: str, text: str, default):
    """A widget's text as a value of the default's kind; a clear error names the widget."""
    if isinstance(default, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"widget {name}: {text!r} is not a JSON value like its default "
                         f"{json.dumps(default)}") from exc


def _dbutils():
    # On Databricks the notebook's namespace holds dbutils; nowhere else does.
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.user_ns.get("dbutils")

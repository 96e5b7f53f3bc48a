"""What the notebooks in notebooks/ share (Jupyter, Databricks)."""

from __future__ import annotations


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

"""personas: GPLR customer personas on Spark (Shi et al., SIGIR 2025, arXiv 2504.17304).

One module per concern: ``ingest`` (landing CSV -> Delta), ``graph`` (bipartite purchase
graph), ``propagation`` (RevAff and the exact walk), ``labelling`` (LLM labellers and the
label store), ``publishing`` (persona tables), ``tracking`` (MLflow), ``query`` (serving),
``evaluation``. The Delta table contracts between them live in ``contracts``.
"""

__version__ = "0.1.0"

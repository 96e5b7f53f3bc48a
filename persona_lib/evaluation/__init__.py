"""Evaluation against the GPLR paper on its OnlineRetail cut.

- ``data``: readers of the vendored files (recorded LLM labels, the authors' split, product
  labels, the authors' released GPLR outputs), as Spark frames keyed like the pipeline's.
- ``metrics``: set-F1 of persona sets, NDCG@K and F1@K of recommendations, all in Spark.
- ``accuracy``: persona accuracy at a budget and sampler (fixed top-k and the published persona model).
- ``recommend``: ALS baseline and persona-conditioned re-ranking.
- ``stability``: RFM deciles versus dominant personas over two six-month halves.
"""

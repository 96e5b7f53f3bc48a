"""Spark settings a test switches for one block of work on the shared session."""

from __future__ import annotations

from persona_lib.spark import session_conf

# conf/test.yaml interprets expressions: on the suite's small slices that is faster. On the whole
# bundled Online Retail data (541,909 lines) generated code wins: an ingest of the 305 files took
# 41 s against 65 s interpreted, and the paper's cut 41 s against 64 s (one warm session).
CODE_GENERATION = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


def generated_code(spark):
    """Whole-stage code generation on for a ``with`` block; the session's settings after it."""
    return session_conf(spark, CODE_GENERATION)

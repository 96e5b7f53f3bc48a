"""Cold start: persona scores for a shopper the tables do not know, from a few products.

A new customer u with products S is one more customer node of the purchase graph, so the
paper's one-step walk gives its affinity directly from the published product affinities:
Psi[u, m] = (1/|S|) x sum over v in S of product_affinity[v, m]. No retraining, and the same
scale as the tables' scores. Products never seen are ignored (and reported).

When the run's persona model is logged with it (``persona_model`` artifact, every pipeline
run), the pyfunc scores the shopper with that model instead (persona_model.score_basket, numpy
only): ``probability`` is then the same calibrated probability as persona_affinity's, ``score``
the one-step walk affinity, ``rank`` by probability, and the added columns ``threshold`` and
``published`` say whether the persona would be in the shopper's published set. Without it
(older runs) probability is the walk score normalised over the personas.

The model is an MLflow pyfunc logged with every pipeline run and registered with an alias per
run (and ``current`` for the newest), so serving can pin a run. Loading it needs mlflow,
pandas and numpy, no Spark.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

try:  # the pyfunc base class; mlflow is a dependency of the package
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

ARTIFACT_KEY = "product_personas"
MODEL_ARTIFACT_KEY = "persona_model"
OUTPUT_COLUMNS = ["row", "persona", "score", "probability", "rank", "matched_products"]
MODEL_OUTPUT_COLUMNS = OUTPUT_COLUMNS + ["threshold", "published"]


def score_products(product_scores: dict[str, dict[str, float]], products: list[str],
                   limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Ranked personas for one shopper: [{persona, score, probability, rank, matched_products}]."""
    known = [p for p in dict.fromkeys(products) if p in product_scores]
    if not known:
        return []
    totals: dict[str, float] = {}
    for product in known:
        for persona, score in product_scores[product].items():
            totals[persona] = totals.get(persona, 0.0) + score / len(known)
    mass = sum(totals.values())
    ranked = sorted(((s, p) for p, s in totals.items() if s > 0), key=lambda t: (-t[0], t[1]))
    rows = [{"persona": p, "score": s, "probability": s / mass, "rank": i + 1, "matched_products": len(known)}
            for i, (s, p) in enumerate(ranked)]
    return rows[:limit] if limit else rows


class ColdStartPersonaModel(PythonModel):
    """pyfunc: input rows with a ``products`` list; output one row per (input row, persona)."""

    def load_context(self, context) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        self._scores = json.loads(Path(path).read_text())
        model_path = context.artifacts.get(MODEL_ARTIFACT_KEY)
        self._model = json.loads(Path(model_path).read_text()) if model_path else None

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        from persona_lib.persona_scoring import score_basket

        limit = (params or {}).get("limit")
        rows = []
        for index, products in enumerate(model_input["products"]):
            if self._model is not None:
                entries = score_basket(self._model, list(products or []))
                entries = entries[:limit] if limit else entries
            else:
                entries = score_products(self._scores, list(products or []), limit)
            for entry in entries:
                rows.append({"row": index, **entry})
        return pd.DataFrame(rows, columns=MODEL_OUTPUT_COLUMNS if self._model is not None else OUTPUT_COLUMNS)


def product_scores_json(product_personas) -> str:
    """Serialise product_personas (a Spark DataFrame) for the model's artifact.

    Its size grows with products x personas (about 20 MB for 50k products and 51 personas),
    never with customers, which is why it may be collected here.
    """
    scores: dict[str, dict[str, float]] = {}
    for row in product_personas.select("product_id", "persona", "score").toLocalIterator():
        scores.setdefault(row["product_id"], {})[row["persona"]] = float(row["score"])
    return json.dumps(scores)


def model_signature():
    """The pyfunc's contract, stated rather than inferred (Unity Catalog registers no model
    without one): a ``products`` list per row in; OUTPUT_COLUMNS out; an optional ``limit``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.string), "products")]),
        outputs=Schema([ColSpec(DataType.long, "row"), ColSpec(DataType.string, "persona"),
                        ColSpec(DataType.double, "score"), ColSpec(DataType.double, "probability"),
                        ColSpec(DataType.long, "rank"), ColSpec(DataType.long, "matched_products")]),
        # 0: every persona with a positive score.
        params=ParamSchema([ParamSpec("limit", DataType.long, 0)]),
    )


def log_and_register(product_personas, registered_model: str, run_alias: str,
                     persona_model: Optional[dict] = None) -> str:
    """Log the model in the active MLflow run, register it, alias it; returns the model URI.

    ``persona_model``: the run's fitted persona model (PersonaModel.artifact()), which the
    pyfunc then scores with; also logged as ``persona_model/persona_model.json``.
    """
    import mlflow
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="personas-cold-start-"))
    artifact = folder / "product_personas.json"
    artifact.write_text(product_scores_json(product_personas))
    artifacts = {ARTIFACT_KEY: str(artifact)}
    if persona_model is not None:
        model_file = folder / "persona_model.json"
        model_file.write_text(json.dumps(persona_model))
        artifacts[MODEL_ARTIFACT_KEY] = str(model_file)
        mlflow.log_artifact(str(model_file), artifact_path="persona_model")
    example = pd.DataFrame({"products": [["85123A", "71053"]]})
    info = mlflow.pyfunc.log_model(
        name="cold_start",
        # Models from code: the model is this file's sibling script, not a pickled object.
        python_model=str(Path(__file__).resolve().with_name("cold_start_pyfunc.py")),
        artifacts=artifacts,
        input_example=example,
        signature=model_signature(),
        # The model script imports this module: persona_lib travels with the model, so it
        # loads where the package is not installed (a serving endpoint, a clean virtualenv).
        code_paths=[str(Path(__file__).resolve().parent)],
        pip_requirements=[f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}",
                          f"numpy=={np.__version__}"],
    )
    client = MlflowClient()
    version = _register(client, registered_model, info)
    client.set_registered_model_alias(registered_model, run_alias, version)
    client.set_registered_model_alias(registered_model, "current", version)
    return f"models:/{registered_model}@{run_alias}"


def _register(client, registered_model: str, info) -> str:
    """A new version of ``registered_model`` from the logged model; returns its number.

    Through the client rather than ``log_model(registered_model_name=...)``, which prints
    "Successfully registered model" and "Created version" on stderr for every run.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return client.create_model_version(registered_model, source=info.model_uri, run_id=info.run_id,
                                       model_id=info.model_id).version


def load_model(model_uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)

"""GPLR's Algorithm 1, written once: T rounds of sample, label, propagate.

`personas run` (labels in the Delta label store, asked of the configured labeller), `personas
label` (one round, no walk) and the accuracy evaluation (labels replayed from the recorded
answers) all run this loop; they differ only in where labels come from and what a walk writes,
which they pass in as a ``RoundLabels`` and a ``propagate`` function.

Each round reads "who is labelled already" once, at the start of the round: the production
store pins the Delta versions it read, so the round's sample stays the same customers while
labelling appends to the store it was drawn from.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import labelling, storage
from persona_lib.config import SAMPLERS, AppConfig
from persona_lib.errors import ConfigError
from persona_lib.labelling.store import is_file_label
from persona_lib.propagation import PropagationResult
from persona_lib.sampling import budget_per_round, sample_customers


@dataclass(frozen=True)
class RoundPlan:
    """How many customers the label store should hold after each round (cumulative), the
    sampling seed, and the sampler: "du" draws round 1 at random and later rounds by the DU
    score of the previous round's walk; "random" draws every round at random."""

    targets: tuple[int, ...]
    seed: int
    sampler: str = "du"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")

    @classmethod
    def from_budget(cls, n_customers: int, budget: float, rounds: int, seed: int,
                    sampler: str = "du") -> "RoundPlan":
        """tau = the budget of ``n_customers`` (sampling.budget_size), split over ``rounds``."""
        targets, running = [], 0
        for size in budget_per_round(n_customers, budget, rounds):
            running += size
            targets.append(running)
        return cls(tuple(targets), seed, sampler)

    def uses_du(self, round_index: int) -> bool:
        return self.sampler == "du" and round_index > 0

    def walks_after(self, round_index: int) -> bool:
        """A walk is needed after the last round (the result) and before every DU round."""
        return round_index == len(self.targets) - 1 or self.uses_du(round_index + 1)


class RoundLabels(Protocol):
    """Where a run's labels live and how a sample gets labelled."""

    def spent(self) -> DataFrame:
        """customer_id of every customer that already counts against the budget (labelled or
        overridden), read once per round; the round's sample is drawn from the others."""

    def rechecks(self, round_index: int) -> DataFrame:
        """customer_id of customers to send again this round although already labelled (their
        history may have changed); an empty frame where labels never go stale."""

    def label(self, sample: DataFrame, round_index: int) -> dict:
        """Label the customers of ``sample``; returns the labelling figures."""

    def seeds(self) -> DataFrame:
        """(customer_id, persona): the labels the walk spreads."""

    def distribution(self) -> dict[str, int]:
        """persona -> number of labels: the DU sampler's Qhat."""


@dataclass(frozen=True)
class RoundRecord:
    """What one round did."""

    index: int                 # 0-based
    target: int                # label store size this round aimed for
    sampler: str               # "random" or "du": how this round's sample was drawn
    sampled: int               # new customers drawn
    rechecks: int              # labelled customers sent again
    label_summary: dict        # RoundLabels.label's figures
    result: Optional[PropagationResult]  # the walk after this round, None where none was needed


@dataclass
class RoundHooks:
    """Where a caller wraps the loop's steps: a scope around each round (an MLflow nested run),
    a timer around each stage, and a callback once a round is done."""

    round_scope: Callable[[int], ContextManager] = lambda round_index: nullcontext()
    stage: Callable[[str, str], ContextManager] = lambda name, label: nullcontext()
    on_sampled: Callable[[int, int, int, str], None] = lambda round_index, sampled, rechecks, sampler: None
    on_round: Callable[[RoundRecord], None] = lambda record: None


def run_rounds(customers: DataFrame, plan: RoundPlan, labels: RoundLabels,
               propagate: Optional[Callable[[DataFrame, int], PropagationResult]],
               hooks: Optional[RoundHooks] = None) -> list[RoundRecord]:
    """Algorithm 1 over ``customers`` (customer_id): for each round, draw up to target - spent
    new customers (at random in round 1, by the DU score of the last walk after), label them
    with ``labels``, and walk (``propagate(seeds, round_index)``) where the plan needs one.
    ``propagate`` None labels only (``personas label``). Returns one record per round."""
    hooks = hooks or RoundHooks()
    records: list[RoundRecord] = []
    walk: Optional[PropagationResult] = None
    rounds = len(plan.targets)
    for round_index, target in enumerate(plan.targets):
        with hooks.round_scope(round_index):
            use_du = plan.uses_du(round_index) and walk is not None
            sampler = "du" if use_du else "random"
            with hooks.stage("sample", f"round {round_index + 1}/{rounds} sampling"):
                spent = labels.spent()
                need = max(0, target - spent.count())
                picked = sample_customers(
                    customers, spent, need, plan.seed, round_index,
                    affinities=walk.customer_affinity if use_du else None,
                    label_distribution=labels.distribution() if use_du else None)
                # Re-checks are labelled already, so never among the picked: a plain union.
                sample = (picked.withColumn("recheck", F.lit(False))
                          .unionByName(labels.rechecks(round_index).withColumn("recheck", F.lit(True))))
                # Cached because it is counted and then labelled; small (the round's budget).
                sample = sample.cache()
                sizes = {row["recheck"]: row["count"] for row in sample.groupBy("recheck").count().collect()}
                sampled, rechecked = sizes.get(False, 0), sizes.get(True, 0)
            hooks.on_sampled(round_index, sampled, rechecked, sampler)
            with hooks.stage("label", f"round {round_index + 1}/{rounds} labelling"):
                summary = labels.label(sample.select("customer_id"), round_index)
            sample.unpersist()
            result = None
            if propagate is not None and plan.walks_after(round_index):
                with hooks.stage("propagate", f"round {round_index + 1}/{rounds} propagation"):
                    result = walk = propagate(labels.seeds(), round_index)
            record = RoundRecord(round_index, target, sampler, sampled, rechecked, summary, result)
            hooks.on_round(record)
            records.append(record)
    return records


class StoreLabels:
    """The production ``RoundLabels``: the Delta label store and overrides of ``config``,
    labelled by the configured labeller (``labelling.label_customers``).

    ``spent`` pins the versions it read, so a sample drawn from it is the same customers
    however often Spark evaluates it, while labelling appends to the store. Budget 0 asks no
    LLM: nothing is re-checked or labelled, and the walk spreads file labels and overrides.
    """

    def __init__(self, spark: SparkSession, config: AppConfig, tables: storage.Tables, customers: DataFrame,
                 events: DataFrame, run_id: str, labeller: Optional[str] = None, asks_llm: bool = True) -> None:
        self._spark, self._config, self._tables = spark, config, tables
        self._customers, self._events, self._run_id = customers, events, run_id
        self._labeller, self._asks_llm = labeller, asks_llm

    def _pinned(self, ref: storage.TableRef) -> Optional[DataFrame]:
        if not ref.exists(self._spark):
            return None
        return ref.read(self._spark, version=ref.version(self._spark))

    def _overridden(self) -> DataFrame:
        overrides = self._pinned(self._tables.persona_overrides)
        if overrides is None:
            return self._spark.createDataFrame([], "customer_id string")
        return overrides.select("customer_id")

    def spent(self) -> DataFrame:
        store = self._pinned(self._tables.persona_labels)
        answered = (store.select("customer_id").join(self._customers, "customer_id", "left_semi")
                    if store is not None else self._spark.createDataFrame([], "customer_id string"))
        return answered.unionByName(self._overridden()).distinct()

    def rechecks(self, round_index: int) -> DataFrame:
        # Round 1 re-sends the LLM-labelled customers: unchanged histories are cache hits, not
        # LLM calls. A label from a file, or an overridden customer, is never re-sent.
        store = self._pinned(self._tables.persona_labels)
        if round_index > 0 or store is None or not self._asks_llm:
            return self._spark.createDataFrame([], "customer_id string")
        from_llm = store.where(~is_file_label(F.col("source"))).select("customer_id")
        return (from_llm.join(self._customers, "customer_id", "left_semi")
                .join(self._overridden(), "customer_id", "left_anti"))

    def label(self, sample: DataFrame, round_index: int) -> dict:
        if not self._asks_llm:
            return {}
        return labelling.label_customers(self._spark, self._config, self._tables, sample, self._events,
                                         self._run_id, labeller=self._labeller)

    def seeds(self) -> DataFrame:
        return labelling.labels_for_propagation(self._spark, self._tables, self._config.forget)

    def distribution(self) -> dict[str, int]:
        return labelling.label_distribution(self._spark, self._tables, self._config.forget)

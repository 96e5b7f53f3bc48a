"""Which customers the LLM labels: the paper's Algorithm 1 sampler.

The budget tau (0: no LLM sampling; below 1: a fraction of the customers; 1 or more: a whole
count) is split over T rounds. Round 1
(``round_index`` 0) draws uniformly at random; later rounds take the customers with the
highest DU score computed from the current affinities Psi (table customer_affinity):

    s(u) = KL(Qhat || Q_u) + H(Q_u)
    Qhat(m) = share of persona m among all labels so far
    Q_u(m)  = Psi[u, m] / sum_n Psi[u, n]
    KL = sum_m Qhat(m) log((Qhat(m) + 1e-16) / (Q_u(m) + 1e-16)),  H = -sum_m Q_u(m) log(Q_u(m) + 1e-16)

(diversity plus uncertainty, as in active learning). A customer the walk never reached has
Q_u = 0 everywhere: H = 0 and the KL is at its largest, so the unreached go first -- the same
value the formula gives with the 1e-16 in the logs, as in the authors' code.

Everything is deterministic for a seed: the random order is a hash of (seed, customer_id),
not a shuffle, so it does not depend on partitioning; ties in the DU score are broken by the
same hash. Already labelled, overridden or forgotten customers are passed in ``excluded``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Union

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_lib.config import budget_problem
from persona_lib.errors import ConfigError, InputError

LOG_EPSILON = 1e-16


def budget_per_round(total_customers: int, budget: Union[float, int], rounds: int) -> list[int]:
    """tau split over T rounds (``budget_size``), the remainder to the first rounds, so the
    sizes differ by at most one."""
    if rounds < 1:
        raise ConfigError(f"sampling.rounds must be at least 1, got {rounds}")
    tau = budget_size(total_customers, budget)
    base, remainder = divmod(tau, rounds)
    return [base + (1 if i < remainder else 0) for i in range(rounds)]


def budget_size(total: int, budget: Union[float, int], key: str = "sampling.budget",
                what: str = "customers") -> int:
    """How many of ``total`` the budget is: 0 (no LLM sampling), a fraction (0 < budget < 1),
    or a whole count (budget >= 1, so 1 is one customer, not all of them); at most ``total``."""
    problem = budget_problem(budget, key, what)
    if problem:
        raise ConfigError(problem)
    tau = int(round(budget * total)) if budget < 1 else int(budget)
    return min(tau, total)


def sample_customers(customers: DataFrame, excluded: Optional[DataFrame], n: int, seed: int,
                     round_index: int, affinities: Optional[DataFrame] = None,
                     label_distribution: Optional[Mapping[str, float]] = None) -> DataFrame:
    """Up to ``n`` customer_ids of ``customers`` not in ``excluded``, for round ``round_index``.

    Round 0, or no affinities: uniform random. Later rounds: the top DU scores, which need ``affinities`` (customer_id,
    persona, score) and ``label_distribution`` (persona -> count or share of the labels).
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    candidates = customers
    if excluded is not None:
        candidates = candidates.join(excluded.select("customer_id"), "customer_id", "left_anti")
    tie_break = F.xxhash64(F.lit(seed), F.lit(round_index), F.col("customer_id"))
    if round_index == 0 or affinities is None:
        picked = candidates.select("customer_id").distinct().orderBy(tie_break, "customer_id")
    else:
        if not label_distribution:
            raise InputError("DU sampling needs the label distribution of the labels so far "
                             "(label_distribution is empty)")
        scored = du_scores(candidates.select("customer_id").distinct(), affinities, label_distribution)
        picked = scored.orderBy(F.desc("du_score"), tie_break, "customer_id")
    return picked.limit(n).select("customer_id")


def du_scores(customers: DataFrame, affinities: DataFrame,
              label_distribution: Mapping[str, float]) -> DataFrame:
    """customer_id, du_score = KL(Qhat || Q_u) + H(Q_u) for every customer of ``customers``."""
    total = float(sum(label_distribution.values()))
    if total <= 0:
        raise InputError("label_distribution must hold positive counts or shares")
    q_hat = {persona: value / total for persona, value in label_distribution.items() if value > 0}
    log_eps = math.log(LOG_EPSILON)
    # KL = sum_m Qhat log(Qhat + eps) - sum_m Qhat log(Q_u + eps). Split the second sum into
    # log(eps) * sum Qhat (as if Q_u were 0 everywhere) plus a correction on the personas
    # the customer has affinity to, so only Psi's non-zero entries are touched.
    kl_constant = sum(q * math.log(q + LOG_EPSILON) for q in q_hat.values()) - log_eps * sum(q_hat.values())
    spark = affinities.sparkSession
    q_hat_df = spark.createDataFrame(list(q_hat.items()), "persona string, q_hat double")
    positive = affinities.where(F.col("score") > 0).select("customer_id", "persona", "score")
    shares = positive.withColumn(
        "q_u", F.col("score") / F.sum("score").over(Window.partitionBy("customer_id")))
    per_customer = (
        # q_hat is one row per persona: broadcasting it keeps the affinities unshuffled.
        shares.join(F.broadcast(q_hat_df), "persona", "left")
        .groupBy("customer_id")
        .agg(
            F.sum(F.coalesce("q_hat", F.lit(0.0))
                  * (F.log(F.col("q_u") + LOG_EPSILON) - log_eps)).alias("kl_correction"),
            (-F.sum(F.col("q_u") * F.log(F.col("q_u") + LOG_EPSILON))).alias("entropy"),
        )
    )
    return (
        customers.join(per_customer, "customer_id", "left")
        .select("customer_id", (F.lit(kl_constant) - F.coalesce("kl_correction", F.lit(0.0))
                                + F.coalesce("entropy", F.lit(0.0))).alias("du_score"))
    )

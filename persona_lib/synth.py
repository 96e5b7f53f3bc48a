"""Synthetic purchase events with planted personas, generated in Spark, deterministic by seed.

The truth is known: every customer is given 1..k personas, every product belongs to one
persona, and each event picks one of the customer's personas (or, with probability
``noise``, any persona) and then a product of that persona with Zipf popularity. Every random
draw is a hash of (seed, event number, purpose), so the output does not depend on how Spark
partitions the work: the same seed gives the same table on any cluster.

Customer activity is skewed (a customer index drawn as C * u^2), so degrees follow a heavy
tail like real shops. Scale: 206k customers, 50k products and ~20M events give about 13M
distinct customer-product pairs (the paper's Instacart Full) – see README.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import SynthConfig

_TWO_POW_63 = float(2 ** 63)


def _uniform(seed: int, salt: str, *cols: Column) -> Column:
    """A uniform draw in [0, 1) that depends only on (seed, salt, cols)."""
    hashed = F.xxhash64(F.lit(seed), F.lit(salt), *cols)
    return hashed.bitwiseAND(F.lit(0x7FFFFFFFFFFFFFFF)).cast("double") / F.lit(_TWO_POW_63)


def persona_names(count: int) -> list[str]:
    return [f"Persona {i:02d}" for i in range(count)]


def customer_personas(spark: SparkSession, params: SynthConfig) -> DataFrame:
    """(customer_index, persona_index, slot) for the personas planted in each customer."""
    customers = spark.range(params.customers).withColumnRenamed("id", "customer_index")
    how_many = 1 + F.floor(_uniform(params.seed, "k", F.col("customer_index")) * params.personas_per_customer_max)
    slots = customers.select(
        "customer_index",
        F.explode(F.sequence(F.lit(0), (how_many - 1).cast("int"))).alias("slot"),
    )
    picked = slots.select(
        "customer_index", "slot",
        F.floor(_uniform(params.seed, "persona", F.col("customer_index"), F.col("slot")) * params.personas)
        .cast("int").alias("persona_index"),
    )
    # Two slots may draw the same persona: keep one, so slots stay dense 0..n-1.
    return (
        picked.groupBy("customer_index", "persona_index").agg(F.min("slot").alias("first_slot"))
        .select("customer_index", "persona_index",
                (F.dense_rank().over(_by_customer()) - 1).alias("slot"))
    )


def _by_customer():
    from pyspark.sql.window import Window

    return Window.partitionBy("customer_index").orderBy("first_slot")


def _zipf_rank(u: Column, n: Column, exponent: float) -> Column:
    """Inverse CDF of a continuous Zipf(exponent) on [1, n+1): rank 0..n-1, rank 0 most popular."""
    if abs(exponent - 1.0) < 1e-9:
        value = F.pow(n + 1, u)
    else:
        one_minus = 1.0 - exponent
        value = F.pow((F.pow(n + 1, F.lit(one_minus)) - 1) * u + 1, F.lit(1.0 / one_minus))
    return F.least(F.floor(value) - 1, n - 1).cast("long")


def generate_events(spark: SparkSession, params: SynthConfig, ingested_at=None) -> DataFrame:
    """purchase_events rows (the Delta contract) for ``params.events`` synthetic invoice lines."""
    _validate(params)
    seed = params.seed
    planted = customer_personas(spark, params)
    planted_count = planted.groupBy("customer_index").agg(F.count(F.lit(1)).alias("n_personas"))
    event = F.col("id")
    draws = spark.range(params.events).select(
        event.alias("event_index"),
        F.floor(F.pow(_uniform(seed, "customer", event), F.lit(2.0)) * params.customers).cast("long")
        .alias("customer_index"),
        _uniform(seed, "noise", event).alias("u_noise"),
        _uniform(seed, "slot", event).alias("u_slot"),
        _uniform(seed, "any_persona", event).alias("u_any"),
        _uniform(seed, "product", event).alias("u_product"),
        _uniform(seed, "day", event).alias("u_day"),
        _uniform(seed, "quantity", event).alias("u_quantity"),
    )
    with_count = draws.join(planted_count, "customer_index")
    chosen_slot = F.floor(F.col("u_slot") * F.col("n_personas")).cast("int")
    events = with_count.withColumn("slot", chosen_slot).join(planted, ["customer_index", "slot"])
    persona_index = F.when(
        F.col("u_noise") < params.noise, F.floor(F.col("u_any") * params.personas).cast("int")
    ).otherwise(F.col("persona_index"))
    # Products are dealt round-robin to personas: persona p owns products p, p + P, p + 2P, ...
    products_of_persona = F.ceil((F.lit(params.products) - persona_index) / F.lit(params.personas)).cast("long")
    rank = _zipf_rank(F.col("u_product"), products_of_persona, params.zipf_exponent)
    product_index = persona_index + F.lit(params.personas) * rank
    day = F.floor(F.col("u_day") * params.days).cast("int")
    event_ts = F.timestamp_seconds(
        F.unix_timestamp(F.to_timestamp(F.lit(params.start))) + day * 86400
        + (F.col("event_index") % 86400)
    )
    ingested = F.lit(ingested_at).cast("timestamp") if ingested_at is not None else F.current_timestamp()
    source = f"synth-seed{seed}"
    return events.select(
        F.sha2(F.concat_ws(":", F.lit(source), F.col("event_index").cast("string")), 256).alias("event_id"),
        (F.col("customer_index") + 1).cast("string").alias("customer_id"),
        F.format_string("P%06d", product_index).alias("product_id"),
        F.format_string("SYNTHETIC PRODUCT %d OF PERSONA %02d", rank, persona_index).alias("product_title"),
        F.format_string("S%d-%d", F.col("customer_index") + 1, day).alias("invoice_no"),
        (1 + F.floor(F.col("u_quantity") * 12)).cast("double").alias("quantity"),
        F.round(F.lit(0.5) + (product_index % 97) / F.lit(10.0), 2).alias("unit_price"),
        event_ts.alias("event_ts"),
        F.lit("Synthland").alias("country"),
        F.lit(source).alias("source_file"),
        F.col("event_index").alias("line_number"),
        F.lit(None).cast("string").alias("content_sha256"),
        ingested.alias("ingested_at"),
    )


def planted_truth(spark: SparkSession, params: SynthConfig) -> DataFrame:
    """(customer_id, personas): the personas planted in each customer, by name."""
    names = F.array(*[F.lit(n) for n in persona_names(params.personas)])
    return (
        customer_personas(spark, params)
        .groupBy("customer_index")
        .agg(F.array_sort(F.collect_list(F.element_at(names, F.col("persona_index") + 1))).alias("personas"))
        .select((F.col("customer_index") + 1).cast("string").alias("customer_id"), "personas")
    )


def _validate(params: SynthConfig) -> None:
    from persona_lib.errors import ConfigError

    checks = {
        "customers": params.customers >= 1,
        "products": params.products >= params.personas,
        "events": params.events >= 1,
        "personas": params.personas >= 1,
        "personas_per_customer_max": 1 <= params.personas_per_customer_max <= params.personas,
        "noise": 0.0 <= params.noise <= 1.0,
        "zipf_exponent": params.zipf_exponent > 0,
        "days": params.days >= 1,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"synth: invalid value for {bad} (products must be >= personas, "
                          f"1 <= personas_per_customer_max <= personas, 0 <= noise <= 1)")


def write_synth(spark: SparkSession, tables: storage.Tables, params: SynthConfig) -> dict:
    """Generate and write synth purchase_events, products and truth; returns the summary."""
    from persona_lib.ingest import event_table_sizes, products_from_events

    events_ref, products_ref, truth_ref = tables.synth_purchase_events, tables.synth_products, tables.synth_truth
    storage.overwrite(generate_events(spark, params), events_ref, contracts.PURCHASE_EVENTS)
    events = events_ref.read(spark)
    storage.overwrite(products_from_events(events), products_ref, contracts.PRODUCTS)
    storage.overwrite(planted_truth(spark, params), truth_ref, contracts.SYNTH_TRUTH)
    return {
        "seed": params.seed,
        "personas": params.personas,
        **event_table_sizes(events),
        "tables": {ref.name: ref.summary(spark) for ref in (events_ref, products_ref, truth_ref)},
    }

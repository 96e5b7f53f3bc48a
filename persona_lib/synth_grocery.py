"""A grocery retailer's export with planted personas: the files a new user would bring
(``personas synth --layout grocery``), shaped unlike our tables, to run "Run on your data" on.

Written under ``--out DIR``:

- ``transactions.parquet`` (a parquet folder): household_key (long), basket_id, sku,
  quantity (double: kilograms for produce, meat, fish and cheese, e.g. 0.35; counts
  otherwise), sales_value (the line total), ts (timestamp). One row per basket and SKU.
- ``catalogue.csv``: sku, department, category, brand, item_name.
- ``truth.csv``: household_key, personas (pipe-separated planted persona names; empty: none).
- ``labels.csv``: a seeded labelled subset in the ``personas label --from-file`` format
  (customer_id, personas; an empty value is "none of these").
- ``taxonomy.yaml``: the planted personas with their definitions.
- ``grocery.yaml``: a ready config (``base:`` the config synth ran with) mapping these files.

The truth shapes purchases. Each household gets 0..3 planted personas (about
``none_share`` get none: they buy only the general assortment). A basket line picks, with
probability ``noise``, a product of the general assortment, else one of the household's
personas and then a product of that persona's offer with Zipf popularity. Most personas are
defined by categories (a home baker buys baking goods), two by brand across every category
(the organic and the bargain shopper): a household's category shares show the first kind
and not the second, which is where a product-level graph should help.

Every draw is a hash of (seed, purpose, keys), as in ``persona_lib.synth``, so the files do
not depend on how Spark partitions the work. The catalogue and the personas' offers are
fixed lists of a few hundred rows (they do not grow with households).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from persona_lib.config import REPO_ROOT, SynthConfig
from persona_lib.errors import UsageError
from persona_lib.synth import _uniform, _zipf_rank, customer_personas


@dataclass(frozen=True)
class GroceryParams:
    households: int = 2_000
    seed: int = 7
    # Share of households with no planted persona ("none of these").
    none_share: float = 0.1
    personas_per_household_max: int = 3
    # Share of basket lines drawn from the general assortment, whatever the personas.
    noise: float = 0.35
    # Share of households in labels.csv.
    labelled_share: float = 0.15
    start: str = "2025-01-06"
    days: int = 182


ORGANIC = "Green Valley Organic"
VALUE = "Value"
NATIONAL = "Fairfield"

# (department, category, items, sold by weight, has an organic line)
CATEGORIES = (
    ("Produce", "Fruit", ("Bananas", "Apples", "Pears", "Grapes", "Oranges", "Blueberries"), True, True),
    ("Produce", "Vegetables", ("Carrots", "Potatoes", "Broccoli", "Tomatoes", "Onions", "Peppers"), True, True),
    ("Produce", "Salad", ("Lettuce", "Spinach", "Rocket", "Cucumber"), False, True),
    ("Dairy", "Milk", ("Whole Milk", "Semi-skimmed Milk", "Oat Drink"), False, True),
    ("Dairy", "Yogurt", ("Greek Yogurt", "Fruit Yogurt", "Kefir"), False, True),
    ("Dairy", "Cheese", ("Cheddar", "Brie", "Parmesan", "Goat Cheese", "Gouda"), True, False),
    ("Dairy", "Butter and Eggs", ("Butter", "Free-range Eggs", "Double Cream"), False, True),
    ("Bakery", "Bread", ("Sourdough", "Wholemeal Loaf", "Baguette", "Bagels"), False, True),
    ("Bakery", "Baking", ("Plain Flour", "Caster Sugar", "Dried Yeast", "Baking Powder", "Cocoa Powder",
                          "Vanilla Extract"), False, False),
    ("Meat and Fish", "Beef", ("Beef Mince", "Sirloin Steak", "Beef Burgers", "Roasting Joint"), True, False),
    ("Meat and Fish", "Poultry", ("Chicken Breast", "Whole Chicken", "Chicken Thighs"), True, False),
    ("Meat and Fish", "Fish", ("Salmon Fillet", "Cod Loin", "King Prawns"), True, False),
    ("Plant-based", "Plant-based", ("Tofu", "Tempeh", "Veggie Burgers", "Hummus"), False, True),
    ("Drinks", "Wine", ("Red Wine", "White Wine", "Prosecco", "Rose Wine"), False, False),
    ("Drinks", "Beer", ("Lager", "IPA", "Stout"), False, False),
    ("Drinks", "Soft Drinks", ("Cola", "Lemonade", "Orange Juice", "Energy Drink"), False, False),
    ("Drinks", "Coffee and Tea", ("Ground Coffee", "Coffee Beans", "Black Tea", "Green Tea"), False, True),
    ("Pantry", "Pasta and Rice", ("Spaghetti", "Penne", "Basmati Rice", "Risotto Rice"), False, True),
    ("Pantry", "Snacks", ("Crisps", "Tortilla Chips", "Chocolate Bar", "Popcorn", "Biscuits"), False, False),
    ("Pantry", "Breakfast", ("Cornflakes", "Porridge Oats", "Granola"), False, True),
    ("Pantry", "Tins", ("Chopped Tomatoes", "Baked Beans", "Tuna Chunks", "Chickpeas"), False, True),
    ("Baby", "Baby Food", ("Fruit Puree", "Baby Rice", "Toddler Snacks"), False, True),
    ("Baby", "Nappies", ("Nappies Size 3", "Nappies Size 5", "Baby Wipes"), False, False),
    ("Pet", "Pet Food", ("Dry Dog Food", "Cat Pouches", "Dog Treats"), False, False),
    ("Pet", "Pet Care", ("Cat Litter", "Poo Bags"), False, False),
    ("Household", "Cleaning", ("Washing-up Liquid", "Laundry Liquid", "Surface Spray"), False, False),
    ("Household", "Paper", ("Toilet Roll", "Kitchen Towel"), False, False),
)

# (name, definition, categories it buys, brand it buys in every category)
PERSONAS = (
    ("Fresh Produce Cook", "Cooks from scratch with fresh fruit, vegetables and salad.",
     ("Fruit", "Vegetables", "Salad"), None),
    ("Home Baker", "Bakes at home: flour, sugar, yeast, cocoa, butter, eggs and cream.",
     ("Baking", "Butter and Eggs"), None),
    ("Young Family", "Shops for babies and toddlers: baby food, nappies, wipes and breakfast cereals.",
     ("Baby Food", "Nappies", "Breakfast"), None),
    ("Pet Owner", "Keeps a dog or a cat: pet food, treats, litter and poo bags.",
     ("Pet Food", "Pet Care"), None),
    ("Wine and Cheese Host", "Entertains with wine, sparkling wine and a cheese board.",
     ("Wine", "Cheese"), None),
    ("Barbecue and Meat Lover", "Buys beef, chicken and beer, for the grill and the roast.",
     ("Beef", "Poultry", "Beer"), None),
    ("Organic and Plant-based Shopper", f"Chooses organic lines ({ORGANIC}) across the store and "
     "plant-based proteins such as tofu, tempeh and hummus.", ("Plant-based",), ORGANIC),
    ("Bargain Hunter", f"Buys the cheapest own-brand ({VALUE}) line of whatever they need.", (), VALUE),
    ("Snacks and Soft Drinks Fan", "Buys crisps, chocolate, biscuits, cola and energy drinks.",
     ("Snacks", "Soft Drinks"), None),
)

BRAND_PRICE = {VALUE: 0.6, NATIONAL: 1.0, ORGANIC: 1.6}

CATALOGUE_SCHEMA = T.StructType([
    T.StructField("sku_index", T.IntegerType(), False),
    T.StructField("sku", T.StringType(), False),
    T.StructField("department", T.StringType(), False),
    T.StructField("category", T.StringType(), False),
    T.StructField("brand", T.StringType(), False),
    T.StructField("item_name", T.StringType(), False),
    T.StructField("by_weight", T.BooleanType(), False),
    T.StructField("price", T.DoubleType(), False),
])
OFFER_SCHEMA = T.StructType([
    T.StructField("persona_index", T.IntegerType(), False),  # -1: the general assortment
    T.StructField("rank", T.LongType(), False),
    T.StructField("sku_index", T.IntegerType(), False),
])
GENERAL = -1


def persona_names() -> list[str]:
    return [name for name, *_ in PERSONAS]


def catalogue_rows() -> list[tuple]:
    """The fixed catalogue: every item in the national brand and the value line, and in the
    organic line where the category has one. Prices are per kg for goods sold by weight."""
    rows = []
    for category_index, (department, category, items, by_weight, organic) in enumerate(CATEGORIES):
        brands = (NATIONAL, VALUE, ORGANIC) if organic else (NATIONAL, VALUE)
        for item_index, item in enumerate(items):
            base_price = 0.8 + ((category_index * 7 + item_index * 3) % 11) * (1.6 if by_weight else 0.45)
            for brand in brands:
                sku_index = len(rows)
                rows.append((sku_index, f"SKU{1000 + sku_index:05d}", department, category, brand, item,
                             by_weight, round(base_price * BRAND_PRICE[brand], 2)))
    return rows


def offer_rows(catalogue: list[tuple]) -> list[tuple]:
    """(persona_index, rank, sku_index): each persona's products, most popular first, and the
    general assortment (persona -1: everything, national brand first). Ranks interleave the
    categories, so a Zipf draw over them spreads across every category of the persona."""
    def ranked(skus: list[tuple]) -> list[int]:
        position: dict[str, int] = {}
        keyed = []
        for row in skus:  # catalogue order: the n-th product of its category gets position n
            n = position.get(row[3], 0)
            position[row[3]] = n + 1
            keyed.append((n, row[0]))
        return [sku for _, sku in sorted(keyed)]

    rows = []
    for persona_index, (_, _, categories, brand) in enumerate(PERSONAS):
        skus = [r for r in catalogue if r[3] in categories or (brand is not None and r[4] == brand)]
        rows += [(persona_index, rank, sku) for rank, sku in enumerate(ranked(skus))]
    rows += [(GENERAL, rank, sku) for rank, sku in enumerate(ranked(list(catalogue)))]
    return rows


def planted(spark: SparkSession, params: GroceryParams) -> DataFrame:
    """(household_index, persona_index, slot) for the households that have personas."""
    draws = SynthConfig(customers=params.households, personas=len(PERSONAS),
                        personas_per_customer_max=params.personas_per_household_max, seed=params.seed)
    return (customer_personas(spark, draws)
            .withColumnRenamed("customer_index", "household_index")
            .where(_uniform(params.seed, "none", F.col("household_index")) >= params.none_share))


def household_key(index_column: str = "household_index"):
    return (F.col(index_column) + 100_001).cast("long")


def transactions(spark: SparkSession, params: GroceryParams) -> DataFrame:
    """One row per basket and SKU: household_key, basket_id, sku, quantity, sales_value, ts."""
    seed = params.seed
    catalogue = spark.createDataFrame(catalogue_rows(), CATALOGUE_SCHEMA)
    offers = spark.createDataFrame(offer_rows(catalogue_rows()), OFFER_SCHEMA)
    offer_sizes = offers.groupBy("persona_index").agg(F.count(F.lit(1)).alias("offer_size"))
    personas = planted(spark, params)
    persona_count = personas.groupBy("household_index").agg(F.count(F.lit(1)).alias("n_personas"))

    household = F.col("household_index")
    households = (spark.range(params.households).withColumnRenamed("id", "household_index")
                  .join(persona_count, "household_index", "left")
                  .withColumn("n_personas", F.coalesce("n_personas", F.lit(0)))
                  # Skewed activity: a few households shop every few days, most now and then.
                  .withColumn("n_baskets", (3 + F.floor(F.pow(_uniform(seed, "baskets", household), F.lit(2.0))
                                                        * 28)).cast("int")))
    baskets = households.select(
        "household_index", "n_personas",
        F.explode(F.sequence(F.lit(0), F.col("n_baskets") - 1)).alias("basket"))
    basket = F.col("basket")
    baskets = baskets.withColumn(
        "n_items", (4 + F.floor(_uniform(seed, "items", household, basket) * 10)).cast("int"))
    lines = baskets.select("household_index", "n_personas", "basket",
                           F.explode(F.sequence(F.lit(0), F.col("n_items") - 1)).alias("line"))
    keys = (household, basket, F.col("line"))
    general = (F.col("n_personas") == 0) | (_uniform(seed, "noise", *keys) < params.noise)
    slot = F.floor(_uniform(seed, "slot", *keys) * F.col("n_personas")).cast("int")
    lines = (lines.withColumn("slot", F.when(general, F.lit(None)).otherwise(slot))
             .join(personas, ["household_index", "slot"], "left")
             .withColumn("persona_index", F.coalesce("persona_index", F.lit(GENERAL)))
             .join(F.broadcast(offer_sizes), "persona_index")
             .withColumn("rank", _zipf_rank(_uniform(seed, "product", *keys), F.col("offer_size"), 1.0))
             .join(F.broadcast(offers), ["persona_index", "rank"])
             .join(F.broadcast(catalogue), "sku_index"))
    u_quantity = _uniform(seed, "quantity", *keys)
    # Weighed goods in kilograms to 5 g (0.35 kg of cheese); the rest in units, mostly one.
    quantity = F.when(F.col("by_weight"), F.round(F.lit(0.1) + u_quantity * 1.4, 2)) \
        .otherwise((1 + F.floor(F.pow(u_quantity, F.lit(3.0)) * 4)).cast("double"))
    day = F.floor(_uniform(seed, "day", household, basket) * params.days)
    second_of_day = (8 * 3600 + F.floor(_uniform(seed, "time", household, basket) * 13 * 3600)).cast("long")
    ts = F.timestamp_seconds(F.unix_timestamp(F.to_timestamp(F.lit(params.start))) + day * 86400 + second_of_day)
    priced = lines.select(
        household_key().alias("household_key"),
        F.format_string("B%d-%03d", household_key(), basket).alias("basket_id"),
        "sku", quantity.alias("quantity"), F.col("price"), ts.alias("ts"))
    # A receipt lists a SKU once per basket: the same product drawn twice adds up.
    return (priced.groupBy("household_key", "basket_id", "sku")
            .agg(F.round(F.sum("quantity"), 2).alias("quantity"),
                 F.round(F.sum(F.col("quantity") * F.col("price")), 2).alias("sales_value"),
                 F.min("ts").alias("ts")))


def truth(spark: SparkSession, params: GroceryParams) -> DataFrame:
    """household_key, personas: the planted names, sorted and pipe-separated (null: none)."""
    names = F.array(*[F.lit(n) for n in persona_names()])
    per_household = (planted(spark, params).groupBy("household_index")
                     .agg(F.array_sort(F.collect_list(F.element_at(names, F.col("persona_index") + 1)))
                          .alias("names")))
    return (spark.range(params.households).withColumnRenamed("id", "household_index")
            .join(per_household, "household_index", "left")
            .select(household_key().alias("household_key"),
                    F.when(F.size("names") > 0, F.concat_ws("|", "names")).alias("personas")))


def labels(spark: SparkSession, params: GroceryParams) -> DataFrame:
    """The labelled subset in the ``--from-file`` format: customer_id, personas."""
    chosen = _uniform(params.seed, "labelled", F.col("household_key")) < params.labelled_share
    return truth(spark, params).where(chosen).select(
        F.col("household_key").cast("string").alias("customer_id"), "personas")


def taxonomy() -> dict:
    return {"name": "grocery_synth", "max_personas": 3,
            "personas": [{"name": name, "definition": definition} for name, definition, *_ in PERSONAS]}


def config(base: Path, out: Path) -> dict:
    """The ready config for the files in ``out``; its paths are relative to ``out``. The base
    config is named relative to ``out`` when both are in one repository checkout (the config
    moves with it), else by its absolute path."""
    base, out = base.resolve(), out.resolve()
    shared = Path(os.path.commonpath([base, out]))
    return {
        "base": os.path.relpath(base, out) if shared.is_relative_to(REPO_ROOT) else str(base),
        "workdir": "work",
        "ingest": {
            "source": {
                "format": "parquet", "path": "transactions.parquet",
                "columns": {"customer_id": "household_key", "product_id": "sku", "quantity": "quantity",
                            "event_ts": "ts", "unit_price": None, "basket_id": "basket_id",
                            "title": None, "country": None},
                "key": ["basket_id", "sku"],
            },
            "products": {
                "format": "csv", "path": "catalogue.csv",
                "columns": {"product_id": "sku", "title": ["item_name", "brand"], "group": "category"},
            },
        },
        "labelling": {"taxonomy": "taxonomy.yaml"},
        "sampling": {"budget": 0},
    }


def _write_single_csv(df: DataFrame, path: Path, order: list[str]) -> None:
    """One CSV file with a header (what a user exports), written by Spark through one task."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    (df.repartition(1).sortWithinPartitions(*order)
     .write.mode("overwrite").option("header", True).csv(str(staging)))
    [part] = staging.glob("part-*.csv")
    os.replace(part, path)
    shutil.rmtree(staging)


def validate(params: GroceryParams) -> None:
    checks = {
        "households": params.households >= 1,
        "none_share": 0.0 <= params.none_share < 1.0,
        "noise": 0.0 <= params.noise < 1.0,
        "labelled_share": 0.0 < params.labelled_share <= 1.0,
        "personas_per_household_max": 1 <= params.personas_per_household_max <= len(PERSONAS),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise UsageError(f"synth --layout grocery: invalid {bad} (households >= 1, 0 < labelled share <= 1)")


def write_grocery(spark: SparkSession, params: GroceryParams, out: Path, base_config: Path) -> dict:
    """Write the grocery files under ``out`` (replacing earlier ones); returns the summary."""
    validate(params)
    out.mkdir(parents=True, exist_ok=True)
    transactions(spark, params).write.mode("overwrite").parquet(str(out / "transactions.parquet"))
    catalogue = spark.createDataFrame(catalogue_rows(), CATALOGUE_SCHEMA)
    _write_single_csv(catalogue.select("sku", "department", "category", "brand", "item_name"),
                      out / "catalogue.csv", ["sku"])
    _write_single_csv(truth(spark, params), out / "truth.csv", ["household_key"])
    _write_single_csv(labels(spark, params), out / "labels.csv", ["customer_id"])
    (out / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy(), sort_keys=False, width=100))
    (out / "grocery.yaml").write_text(
        "# Written by `personas synth --layout grocery`: the synthetic grocery files beside this\n"
        "# file, mapped to purchase_events. Relative paths resolve against this folder.\n"
        + yaml.safe_dump(config(base_config, out), sort_keys=False, width=100))
    written = spark.read.parquet(str(out / "transactions.parquet"))
    sizes = written.agg(F.count(F.lit(1)).alias("lines"), F.countDistinct("household_key").alias("households"),
                        F.countDistinct("basket_id").alias("baskets"), F.countDistinct("sku").alias("skus")).first()
    labelled = spark.read.option("header", True).csv(str(out / "labels.csv"))
    label_counts = labelled.agg(F.count(F.lit(1)).alias("rows"),
                                F.count(F.when(F.col("personas").isNull(), 1)).alias("none")).first()
    return {
        "layout": "grocery", "seed": params.seed, "out": str(out),
        "params": dataclasses.asdict(params),
        **sizes.asDict(),
        "personas": len(PERSONAS),
        "labelled": label_counts["rows"], "labelled_none_of_these": label_counts["none"],
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
        "config": str(out / "grocery.yaml"),
    }

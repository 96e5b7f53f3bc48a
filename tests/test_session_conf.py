"""A runtime setting chosen for one stage (persona_lib.spark.session_conf) ends with it."""

from __future__ import annotations

import pytest

from persona_lib.spark import session_conf

COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"
UNSET_KEY = "spark.personas.test.session_conf"


def test_a_setting_holds_inside_the_block_and_is_restored_after_it(spark):
    before = spark.conf.get(COMPRESSED)
    with session_conf(spark, {COMPRESSED: "false", UNSET_KEY: "inside"}):
        assert spark.conf.get(COMPRESSED) == "false"
        assert spark.conf.get(UNSET_KEY) == "inside"
    assert spark.conf.get(COMPRESSED) == before
    assert spark.conf.get(UNSET_KEY, None) is None


def test_a_failing_block_restores_the_settings_too(spark):
    before = spark.conf.get(COMPRESSED)
    with pytest.raises(RuntimeError), session_conf(spark, {COMPRESSED: "false"}):
        raise RuntimeError("the stage failed")
    assert spark.conf.get(COMPRESSED) == before

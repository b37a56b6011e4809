"""Run ids: one pattern checked at the CLI, every stage's entry point and the pipeline; one quoting helper."""

from __future__ import annotations

import re

import pytest

from gramian.cli import STAGES, main, new_run_id
from gramian.config import load_config
from gramian.errors import ConfigError
from gramian.pipeline import execute, run_pipeline, stage_function
from gramian.runs import RUN_ID_PATTERN, check_run_id, run_where, sql_literal

BAD = ["x' OR '1'='1", "a'b", "", " r1", "r 1", "../other", "a/b", "a:b", "-lead", ".hidden", "r" * 129,
       "é", "a;b", "a\\b"]


@pytest.mark.parametrize("good", ["20261204T000000", "ials-dim64", "r1", "A.b_c-9", "r" * 128])
def test_run_id_pattern_accepts_dag_cli_and_readable_ids(good):
    assert check_run_id(good) == good


def test_generated_cli_run_id_matches_the_pattern():
    run_id = new_run_id()
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("bad", BAD)
def test_run_id_outside_the_pattern_is_refused_naming_the_pattern(bad):
    with pytest.raises(ConfigError, match=re.escape(RUN_ID_PATTERN)) as info:
        check_run_id(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_entry_point_refuses_a_crafted_run_id_before_touching_spark(stage):
    cfg = load_config()
    with pytest.raises(ConfigError, match=re.escape(RUN_ID_PATTERN)):
        stage_function(STAGES, stage)(None, cfg, "x' OR '1'='1")  # no session: refused before any read


def test_pipeline_refuses_a_crafted_run_id():
    cfg = load_config()
    with pytest.raises(ConfigError, match="run id must be"):
        run_pipeline(None, cfg, "x' OR '1'='1", STAGES, ("train",))
    with pytest.raises(ConfigError, match="run id must be"):
        execute(None, cfg, "a'b", "train", stage_function(STAGES, "train"), ("train",))


def test_cli_refuses_a_crafted_run_id_with_exit_2_and_the_pattern(capsys):
    assert main(["train", "--run-id", "x' OR '1'='1"]) == 2
    err = capsys.readouterr().err
    assert "gramian train: error: run id must be" in err and RUN_ID_PATTERN in err and "x' OR '1'='1" in err


def test_replace_where_predicates_quote_through_one_helper():
    assert run_where("r1") == "run_id = 'r1'"
    assert run_where("r1", stage="train") == "run_id = 'r1' AND stage = 'train'"
    assert run_where("r1", metric=("a", "b")) == "run_id = 'r1' AND metric IN ('a', 'b')"
    assert sql_literal("it's a \\ test") == "'it\\'s a \\\\ test'"
    with pytest.raises(ConfigError):
        run_where("r1' OR '1'='1")

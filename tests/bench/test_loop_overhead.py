"""The loop-overhead benchmark (`specjax.bench.loop_overhead`): its arithmetic on
hand-made rows, its config, and one tiny end-to-end measurement."""

from __future__ import annotations

import jax
import pytest

from configs import loop_overhead as config_module
from specjax.bench import loop_overhead as lo
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers, init_params
from tests.drafters.conftest import PROMPTS, TINY

BARE = {"target_prefill": 0.5, "target_1": 0.010, "target_5": 0.014, "draft_prefill": 0.2,
        "draft_1": 0.002, "draft_16": 0.006}


def row(method, seconds, tokens, steps, forwards=0.0, prompt=0):
    return lo.Row(method, prompt, seconds, seconds, tokens, steps, forwards, True)


def test_expected_seconds_add_the_forwards_each_method_runs():
    assert lo.expected_seconds(row("autoregressive", 1.0, 101, 100), BARE, 4, 16) == \
        pytest.approx(100 * 0.010)
    assert lo.expected_seconds(row("null_draft_eager", 1.0, 101, 100), BARE, 4, 16) == \
        pytest.approx(100 * 0.012)
    assert lo.expected_seconds(row("null_draft_lazy", 1.0, 101, 100, 7), BARE, 4, 16) == \
        pytest.approx(100 * 0.010 + 7 * 0.006)
    assert lo.expected_seconds(row("chain_k4", 1.0, 101, 30, 125), BARE, 4, 16) == \
        pytest.approx(30 * 0.014 + 125 * 0.002)


def test_draft_forwards_count_catch_up_and_pending_leaves():
    import numpy as np

    class Stats:
        accept_hist = np.array([[3, 0, 0, 0, 5]])  # 5 steps accepted all 4 drafts

    assert lo.draft_forwards("null_draft_eager", None, 100, 4, 16) == 100
    assert lo.draft_forwards("null_draft_lazy", None, 100, 4, 16) == 7
    assert lo.draft_forwards("null_draft_deferred", None, 100, 4, 16) == 0
    assert lo.draft_forwards("chain_k4", Stats, 8, 4, 16) == 4 * 8 + 5


def test_summary_ratios_are_per_prompt_medians():
    rows = [row("autoregressive", 1.0, 100, 99, prompt=0), row("null_pld", 1.1, 100, 99, prompt=0),
            row("autoregressive", 2.0, 100, 99, prompt=1), row("null_pld", 2.0, 100, 99, prompt=1),
            row("autoregressive", 1.0, 100, 99, prompt=2), row("null_pld", 1.3, 100, 99, prompt=2)]
    bare = [BARE, BARE, BARE]
    s = lo.summarize(rows, bare, 4, 16)
    assert s["null_pld"]["vs_autoregressive"] == pytest.approx(1.1)
    assert s["autoregressive"]["vs_autoregressive"] == pytest.approx(1.0)
    assert s["null_pld"]["vs_bare_forwards"] == pytest.approx(1.3 / (99 * 0.010))
    assert s["null_pld"]["identical"]


def test_config_variants_and_unknown_keys():
    for arg in ("", "qwen", "tiny"):
        lo.from_config_dict(config_module.get_config(arg))
    c = config_module.get_config("tiny").to_dict()
    c["repeat"] = 3
    with pytest.raises(ValueError, match="unknown config key"):
        lo.from_config_dict(c)
    with pytest.raises(ValueError, match="unknown loop_overhead variant"):
        config_module.get_config("huge")


def test_measure_runs_every_method_identically_on_a_tiny_model():
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    dcfg, dparams = first_layers(TINY, params, 1)
    out = lo.measure(DecoderLM(TINY), params, DecoderLM(dcfg), dparams, PROMPTS[:2],
                     max_new_tokens=8, k=2, lazy=4, repeats=1, log=lambda s: None)
    names = {"autoregressive", "null_pld", "null_draft_eager", "null_draft_lazy",
             "null_draft_deferred", "chain_k2"}
    assert set(out["summary"]) == names
    assert all(s["identical"] for s in out["summary"].values())
    # nothing drafted: one token per target forward
    for name in ("null_pld", "null_draft_eager", "null_draft_lazy", "null_draft_deferred"):
        assert out["summary"][name]["tokens_per_step"] == pytest.approx(8 / 7)
    assert len(out["rows"]) == 2 * len(names) and len(out["bare"]) == 2

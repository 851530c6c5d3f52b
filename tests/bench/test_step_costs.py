"""SmartSpec's loop-calibrated step costs (`specjax.bench.step_costs`): the fit, the
verification widths of the bare model, and the loop timing on a tiny model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from specjax import policies
from specjax.bench import step_costs
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers, init_params
from tests.drafters.conftest import PROMPTS, TINY


def test_fit_is_exact_on_two_lengths_and_least_squares_on_more():
    bare = (1.0, 1.4, 1.8, 2.2)
    assert step_costs.fit(bare, {0: 0.012, 3: 0.024}) == pytest.approx((0.002, 0.010))
    a, b = step_costs.fit(bare, {0: 0.012, 1: 0.0155, 2: 0.0205, 3: 0.030})
    x, y = np.array([1.0, 1.4, 1.8, 2.2]), np.array([0.012, 0.0155, 0.0205, 0.030])
    np.testing.assert_allclose((b, a), np.polyfit(x, y, 1))


@pytest.mark.parametrize("measured, match", [
    ({0: 0.01}, "two lengths"),
    ({0: 0.02, 2: 0.01}, "calibration failed"),  # slower with fewer drafts: noise
    ({0: 0.01, 7: 0.02}, "must lie in"),
])
def test_fit_refuses_what_it_cannot_model(measured, match):
    with pytest.raises(ValueError, match=match):
        step_costs.fit((1.0, 1.5, 2.0), measured)


def test_calibration_costs_are_loop_times_relative_to_an_empty_step():
    cal = step_costs.LoopCalibration(bare=(1.0, 1.5, 2.0), measured={}, a=0.004, b=0.010)
    assert cal.seconds(2) == pytest.approx(0.024)
    assert cal.costs == pytest.approx((1.0, 0.019 / 0.014, 0.024 / 0.014))
    assert cal.modelled_seconds([3, 0, 2]) == pytest.approx(3 * 0.014 + 2 * 0.024)
    # a goodput policy accepts them as they are
    assert policies.Goodput(cal.costs).max_k == 2


def test_bare_costs_verify_at_the_loops_widths():
    assert [policies.goodput.verify_width(k, None) for k in range(4)] == [1, 2, 3, 4]
    assert [policies.goodput.verify_width(k, (1, 2, 4)) for k in range(4)] == [1, 2, 4, 4]
    with pytest.raises(ValueError, match="no verification width"):
        policies.goodput.verify_width(4, (1, 2, 4))


@pytest.fixture(scope="module")
def pair():
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    dcfg, dparams = first_layers(TINY, params, 1)
    return DecoderLM(TINY), params, DecoderLM(dcfg), dparams


def test_loop_step_seconds_times_each_length(pair):
    out = step_costs.loop_step_seconds(*pair, max_k=2, ks=(0, 2), max_pending=2, context=16,
                                       new_tokens=8, repeats=1)
    assert set(out) == {0, 2} and all(v > 0 for v in out.values())


def test_measure_smartspec_models_the_steps_each_run_took(pair, monkeypatch):
    # deterministic calibration (tiny-model timings are noise); the runs are real
    cal = step_costs.LoopCalibration(bare=(1.0, 1.2, 1.4), measured={0: 1e-3, 2: 2e-3},
                                     a=0.0, b=1e-3)
    monkeypatch.setattr(step_costs, "calibrate", lambda *a, **k: cal)
    monkeypatch.setattr(step_costs, "loop_step_seconds", lambda *a, ks, **k: {ks[0]: 1.5e-3})
    res = step_costs.measure_smartspec(*pair, PROMPTS[:2], max_new_tokens=8, max_k=2,
                                       max_pending=2, repeats=1, log=lambda s: None)
    assert set(res["summary"]) == {"autoregressive", "smartspec_loop", "smartspec_bare"}
    assert all(s["identical"] for s in res["summary"].values())
    assert res["calibration"]["held_out_modelled"] == pytest.approx(1.2e-3)
    for r in res["rows"]:
        if r["method"] != "autoregressive":  # one count per drafted length 0..2
            assert len(r["steps_per_k"]) == 3 and sum(r["steps_per_k"]) >= 1
            assert r["tokens"] == 8  # max_new_tokens, the first one included
    s = res["summary"]["smartspec_loop"]
    r0 = next(r for r in res["rows"] if r["method"] == "smartspec_loop" and r["prompt"] == 0)
    ar0 = next(r for r in res["rows"] if r["method"] == "autoregressive" and r["prompt"] == 0)
    assert np.isfinite(s["modelled_speedup"])  # its sign is timing noise on a tiny model
    expect = ar0["decode_seconds"] / ar0["tokens"] * r0["tokens"] / cal.modelled_seconds(
        r0["steps_per_k"])
    assert step_costs.summarize_smartspec(
        [ar0, r0], cal)["smartspec_loop"]["modelled_speedup"] == pytest.approx(expect)

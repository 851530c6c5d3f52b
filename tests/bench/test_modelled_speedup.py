"""Modelled speedup (tau / measured step cost) on hand-made records with known answers."""

import math

import pytest

from specjax import theory
from specjax.bench import metrics
from specjax.bench.metrics import Record


def rec(method, qid, seconds, calls, tokens, hist=()):
    return Record(method=method, question_id=qid, category="c", new_tokens=tokens,
                  seconds=seconds, target_calls=calls, steps=int(sum(hist)),
                  accept_hist=list(hist), tokens=list(range(tokens)))


def by_method(records, baseline="autoregressive"):
    return {s.method: s for s in metrics.summarize(records, baseline, check_identity=False)}


def test_matches_closed_form_of_the_iid_model():
    # alpha = 0.5, gamma = 2: P(accept 0, 1, 2 drafts) = 1/2, 1/4, 1/4 -> hist [2, 1, 1],
    # tau = E(0.5, 2) = 1.75. A step costs gamma c + 1 = 1.5 AR steps at c = 0.25:
    # AR 100 ms per forward, SD 150 ms per forward (4 steps + prefill).
    records = [rec("autoregressive", "a", 0.8, calls=8, tokens=8),
               rec("sd", "a", 0.75, calls=5, tokens=8, hist=[2, 1, 1])]
    s = by_method(records)
    assert s["sd"].tau == pytest.approx(theory.expected_tokens(0.5, 2))
    assert s["sd"].ms_per_call == pytest.approx(150.0)
    assert s["sd"].step_cost == pytest.approx(1.5)
    assert s["sd"].modelled_speedup == pytest.approx(theory.speedup(0.5, 2, c=0.25))
    assert s["sd"].modelled_speedup == pytest.approx(1.75 / 1.5)
    # measured = modelled * N / (F tau): the prefill token costs a forward in both
    assert s["sd"].speedup == pytest.approx(0.8 / 0.75)
    assert s["sd"].speedup == pytest.approx(s["sd"].modelled_speedup * 8 / (5 * 1.75))
    assert s["autoregressive"].step_cost == 1.0 and s["autoregressive"].modelled_speedup == 1.0


def test_pooled_over_prompts_and_the_exact_link_to_measured():
    records = [rec("autoregressive", "a", 1.0, calls=10, tokens=10),
               rec("autoregressive", "b", 3.0, calls=20, tokens=20),
               rec("sd", "a", 0.5, calls=4, tokens=10, hist=[0, 0, 3]),
               rec("sd", "b", 1.0, calls=7, tokens=20, hist=[0, 0, 6])]
    sd = by_method(records)["sd"]
    cost = (1500 / 11) / (4000 / 30)  # pooled ms per forward, method / baseline
    assert sd.tau == 3.0
    assert sd.step_cost == pytest.approx(cost)
    assert sd.modelled_speedup == pytest.approx(3.0 / cost)
    assert sd.speedup == pytest.approx(2.5)  # median of 2x and 3x: not pooled
    pooled = 4.0 / 1.5
    assert pooled == pytest.approx(sd.modelled_speedup * 30 / (11 * sd.tau))


def test_methods_without_a_histogram_and_without_a_baseline():
    records = [rec("autoregressive", "a", 1.0, calls=10, tokens=10),
               rec("hf_greedy", "a", 2.0, calls=10, tokens=10),
               rec("hf_assisted", "a", 0.5, calls=4, tokens=10),  # drafts, no histogram
               rec("other", "z", 1.0, calls=5, tokens=5)]  # prompt the baseline did not run
    s = by_method(records)
    assert s["hf_greedy"].step_cost == pytest.approx(2.0)
    assert s["hf_greedy"].modelled_speedup == pytest.approx(0.5)  # tau 1: one token / forward
    assert s["hf_assisted"].step_cost == pytest.approx(1.25)
    assert math.isnan(s["hf_assisted"].modelled_speedup)
    assert math.isnan(s["other"].step_cost) and math.isnan(s["other"].modelled_speedup)
    assert s["other"].ms_per_call == pytest.approx(200.0)
    no_base = by_method(records, baseline=None)
    assert all(math.isnan(r.step_cost) for r in no_base.values())


def test_markdown_columns():
    records = [rec("autoregressive", "a", 0.8, calls=8, tokens=8),
               rec("sd", "a", 0.75, calls=5, tokens=8, hist=[2, 1, 1]),
               rec("hf_assisted", "a", 0.5, calls=4, tokens=8)]
    table = metrics.markdown_table(metrics.summarize(records, "autoregressive", False))
    head, sep, *lines = table.splitlines()
    assert "ms/target fwd (step cost x AR)" in head and "modelled speedup (tau / step cost)" in head
    assert head.count("|") == sep.count("|") == lines[0].count("|") == 11
    assert "| 150.0 (1.50x) | 1.17x |" in lines[1]
    assert "| 125.0 (1.25x) | - |" in lines[2]

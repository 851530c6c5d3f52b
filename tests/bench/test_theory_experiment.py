"""The verifier-vs-optimum experiment on tiny random models (no real assets)."""

import json

import jax
import numpy as np
import pytest

from specjax.bench import theory_experiment as te
from specjax.bench import verifier_rates, verifier_report, verifier_stats
from specjax.models.config import ModelConfig
from specjax.models.params import init_params

V = 64
NS = (2, 3, 4)


def _model(seed, layers):
    cfg = ModelConfig(arch="qwen2", vocab_size=V, dim=32, num_layers=layers, num_heads=4,
                      num_kv_heads=2, head_dim=8, ffn_dim=64, qkv_bias=True, tie_embeddings=True)
    # scale 0.3: peaked, clearly different laws (0.02 would make both nearly uniform)
    return cfg, init_params(cfg, jax.random.key(seed), scale=0.3)


@pytest.fixture(scope="module")
def models():
    return _model(0, 2), _model(1, 1)


# one generation batch, one scoring length: one compilation of each per model
SHAPES = dict(num_positions=6, generate_batch=3, length_bucket=32)
ITEMS = (
    te.TextItem("spec_bench", "a", "coding", (1, 2, 3, 4, 5)),
    te.TextItem("spec_bench", "b", "writing", tuple(range(10, 30))),
    te.TextItem("humaneval", "c", "humaneval", (7, 9, 11)),
)


@pytest.fixture(scope="module")
def exact_result(models):
    target, draft = models
    settings = te.Settings(temperatures=(0.7, 1.0), num_drafts=NS, **SHAPES)
    # the target as a loader, the draft as a loaded pair: both forms are accepted
    return te.run(lambda: target, draft, ITEMS, settings, log=None)


def test_shapes_and_counts(exact_result):
    r = exact_result
    assert r["num_drafts"] == list(NS) and r["temperatures"] == [0.7, 1.0]
    assert [p["positions"] for p in r["prompts"]] == [6, 6, 6]
    for t in ("0.7", "1.0"):
        assert set(r["summary"][t]) == {"all", "spec_bench", "humaneval"}
        s = r["summary"][t]["all"]
        assert (s["rows"], s["prompts"]) == (18, 3)
        assert r["summary"][t]["spec_bench"]["rows"] == 12
        for k in verifier_rates.VERIFIERS + verifier_rates.OPTIMA:
            assert len(s["mean"][k]) == len(s["se"][k]) == len(NS)
            assert all(np.isfinite(s["se"][k]))
        assert isinstance(s["mean"]["single"], float)
        assert s["mean_support"] == V and s["max_dropped_p"] == 0.0
    assert r["argmax_agreement"] >= 0.95  # the scoring forward reproduces the greedy tokens


def test_table_is_consistent(exact_result):
    """Each verifier <= the optimum of its draft law; i.i.d. optimum <= without-replacement one."""
    for t in ("0.7", "1.0"):
        s = exact_result["summary"][t]["all"]
        m = {k: np.array(v) for k, v in s["mean"].items()}
        assert all(v == 0 for v in s["violations"].values()), s["violations"]
        assert np.all(m["rrs_with_replacement"] <= m["optimal_iid"] + 1e-12)
        assert np.all(m["kseq"] <= m["optimal_iid"] + 1e-12)
        assert np.all(m["rrs_without_replacement"] <= m["optimal_without_replacement"] + 1e-12)
        # without replacement the drafts are distinct, so all-in-B is rarer: h_wor <= h_iid and
        # alpha*_wor >= alpha*_iid (Hu et al., arXiv:2502.18779)
        assert np.all(m["optimal_iid"] <= m["optimal_without_replacement"] + 1e-12)
        # more drafts never hurt the optima; n = 1 is the single-draft rate
        for k in verifier_rates.OPTIMA:
            assert np.all(np.diff(m[k]) >= -1e-12)
            assert m[k][0] >= m["single"] - 1e-12
        assert np.all(m["rrs_with_replacement"] >= m["single"] - 1e-12)
        assert np.all(m[k] <= 1.0 + 1e-12)
        for k, gap in s["gap_percent"].items():
            assert np.all(np.array(gap) >= -1e-9), k
            assert np.all(np.isfinite(s["gap_se_percent"][k])), k
        # V = 64: RRS without replacement is exact, lower == upper
        lo, hi = s["rrs_without_replacement_mean_bounds"]
        np.testing.assert_allclose(lo, hi, atol=1e-12)
        # the mean gap is the gap of the mean rates
        want = 100 * (m["optimal_iid"] - m["kseq"]) / m["optimal_iid"]
        np.testing.assert_allclose(s["gap_percent"]["kseq"], want, rtol=1e-12)


def test_truncation_is_recorded_and_validated(models):
    target, draft = models
    settings = te.Settings(temperatures=(0.7,), num_drafts=(2, 3), min_prob=2e-3, validate_rows=3,
                           **SHAPES)
    r = te.run(target, draft, ITEMS, settings, log=None)
    s = r["summary"]["0.7"]["all"]
    assert s["mean_support"] < V
    assert 0 < max(s["max_dropped_p"], s["max_dropped_q"]) < 0.05
    val = r["summary"]["0.7"]["validation"]
    assert len(val["rows"]) == 3
    # rates move by at most a small multiple of the dropped mass
    assert val["max_abs_diff_exact_columns"] <= 4 * max(s["max_dropped_p"], s["max_dropped_q"])
    assert all(v == 0 for v in s["violations"].values())


def test_truncate_support():
    p = np.array([0.5, 0.3, 0.1999, 1e-4, 0.0])
    q = np.array([0.25, 0.25, 0.25, 0.25, 0.0])
    pt, qt, dp, dq = verifier_rates.truncate_support(p, q, min_prob=1e-3)
    assert pt.shape == (4,) and dp == 0.0 and dq == 0.0  # q keeps token 3; token 4 has no mass
    pt, qt, dp, dq = verifier_rates.truncate_support(p, np.array([0.5, 0.3, 0.2, 0.0, 0.0]), 1e-3,
                                                     keep_top=0)
    assert pt.shape == (3,) and np.isclose(dp, 1e-4) and dq == 0.0
    np.testing.assert_allclose([pt.sum(), qt.sum()], 1.0)


def test_cluster_standard_error():
    x = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    g = np.array([0, 0, 0, 1, 1])
    mean, se = verifier_stats.cluster_mean_se(x, g)
    m = x.mean()
    want = np.sqrt(2 / 1 * ((x[:3] - m).sum() ** 2 + (x[3:] - m).sum() ** 2)) / 5
    assert np.isclose(mean, m) and np.isclose(se, want)
    assert np.isnan(verifier_stats.cluster_mean_se(x, np.zeros(5))[1])


def test_outputs(exact_result, tmp_path):
    pytest.importorskip("matplotlib")
    paths = verifier_report.write_outputs(exact_result, tmp_path, title="tiny")
    table = paths["table"].read_text()
    assert "### all" in table and "### humaneval" in table
    assert "optimum, without replacement" in table and "gap" in table
    assert "VIOLATIONS" not in table
    loaded = json.loads(paths["results"].read_text())
    assert loaded["summary"]["0.7"]["all"]["rows"] == 18 and "rows" not in loaded
    assert paths["plot"].stat().st_size > 1000
    with np.load(paths["rows"]) as z:
        assert z["0.7/optimal_iid"].shape == (18, len(NS)) and z["prompt"].shape == (18,)


def test_vocab_mismatch_and_settings_errors(models):
    target, _ = models
    other = _model(2, 1)
    other = (other[0].replace(vocab_size=V + 1), init_params(other[0].replace(vocab_size=V + 1),
                                                            jax.random.key(2)))
    with pytest.raises(ValueError, match="vocabulary"):
        te.run(target, other, ITEMS[:1], te.Settings(num_positions=2, num_drafts=(2,)), log=None)
    with pytest.raises(ValueError, match="temperatures"):
        te.Settings(temperatures=(0.0,))
    with pytest.raises(ValueError, match="num_drafts"):
        te.Settings(num_drafts=(1, 2))


def test_config_parses():
    from configs import theory_optimal as theory_config  # the repo root, as in test_runner.py

    for arg in (None, "tiny"):
        cfg = te.from_config_dict(theory_config.get_config(arg))
        assert cfg.settings.temperatures == (0.7, 1.0)
        assert all(n >= 2 for n in cfg.settings.num_drafts)
        assert all(0 <= i < 100 for i in te._indices(cfg.prompts.humaneval))  # tuning split only
    assert te._indices("0-3,7") == [0, 1, 2, 3, 7]
    c = theory_config.get_config()
    c.unlock()
    c.settings.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        te.from_config_dict(c)
    with pytest.raises(ValueError, match="variant"):
        theory_config.get_config("huge")


def test_logits_cache_skips_the_models(models, tmp_path):
    target, draft = models
    settings = te.Settings(temperatures=(1.0,), num_drafts=(2,), **SHAPES)
    cache = tmp_path / "logits.npz"
    first = te.run(target, draft, ITEMS, settings, log=None, logits_cache=cache, cache_key="tiny")
    assert cache.is_file()

    def fail():
        raise AssertionError("the models must not be loaded when the cache matches")

    again = te.run(fail, fail, ITEMS, settings, log=None, logits_cache=cache, cache_key="tiny")
    assert (verifier_report.jsonable(again["summary"])
            == verifier_report.jsonable(first["summary"]))  # NaN -> None
    with pytest.raises(AssertionError, match="must not"):  # another key: the cache is not used
        te.run(fail, fail, ITEMS, settings, log=None, logits_cache=cache, cache_key="other")

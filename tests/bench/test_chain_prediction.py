"""Measured vs predicted tokens per call (bench.chain_prediction) on tiny models."""

import jax
import numpy as np
import pytest

from specjax import theory
from specjax.bench import chain_prediction as cp
from specjax.models.config import ModelConfig
from specjax.models.params import init_params

CFG = ModelConfig(arch="llama", vocab_size=24, dim=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, ffn_dim=64)


def test_predicted_tokens():
    a = np.full(10, 0.8)
    out = cp.predicted_tokens(a, 4)
    assert out["iid"] == pytest.approx(3.3616)  # the reference value
    assert out["positional"] == pytest.approx(3.3616)
    a = np.array([1.0, 0.5, 0.0, 1.0])
    # starts t = 0, 1, 2 with k = 2: 1 + a_t + a_t * a_{t+1}
    want = np.mean([1 + 1 + 0.5, 1 + 0.5 + 0.0, 1 + 0 + 0])
    assert cp.predicted_tokens(a, 2)["positional"] == pytest.approx(want)
    assert cp.predicted_tokens(a, 2)["iid"] == pytest.approx(theory.expected_tokens(0.625, 2))
    with pytest.raises(ValueError, match="non-empty"):
        cp.predicted_tokens(np.zeros(0), 2)
    with pytest.raises(ValueError, match="k must"):
        cp.predicted_tokens(a, 0)


def test_draft_equal_to_target_accepts_everything():
    params = init_params(CFG, jax.random.key(0), scale=0.3)
    res = cp.run((CFG, params), (CFG, params), [[1, 2, 3], [4, 5]], temperatures=[1.0], ks=[3],
                 num_tokens=9)
    (row,) = res["rows"]
    np.testing.assert_allclose([row["alpha"], row["iid"], row["positional"]], [1, 4, 4],
                               atol=1e-5)
    assert row["measured"] == 4.0 and row["tokens"] == 18


def test_measured_close_to_prediction():
    """A real draft/target gap: the loop's tau is close to the per-position prediction."""
    target = (CFG, init_params(CFG, jax.random.key(1), scale=0.3))
    draft = (CFG, init_params(CFG, jax.random.key(2), scale=0.3))
    prompts = [[i % CFG.vocab_size, (3 * i + 1) % CFG.vocab_size] for i in range(24)]
    res = cp.run(target, draft, prompts, temperatures=[1.0], ks=[2], num_tokens=16,
                 batch_size=24)
    (row,) = res["rows"]
    assert 0.2 < row["alpha"] < 0.95
    assert row["steps"] > 150
    assert abs(row["measured"] / row["positional"] - 1) < 0.1, row
    assert len(row["per_prompt"]) == 24
    with pytest.raises(ValueError, match="vocabulary"):
        cp.run(target, (CFG.replace(vocab_size=25), None), prompts, temperatures=[1.0], ks=[2],
               num_tokens=4)


def test_config_rejects_unknown_keys():
    from configs import chain_prediction as conf

    cfg = cp.from_config_dict(conf.get_config("tiny"))
    assert cfg.ks == (2,) and cfg.temperatures == (1.0,)
    d = conf.get_config().to_dict()
    d["kk"] = 3
    with pytest.raises(ValueError, match="kk"):
        cp.from_config_dict(d)

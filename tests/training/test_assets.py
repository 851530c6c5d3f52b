"""Trained heads as assets (`specjax.training.assets`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from specjax.drafters import mlp_speculator as ms
from specjax.models.params import init_params
from specjax.training import assets
from tests.drafters.conftest import TINY


def test_save_load_round_trip_and_refusal_of_another_target(tmp_path):
    cfg = ms.SpeculatorConfig(dim=TINY.dim, vocab_size=TINY.vocab_size, n_predict=2)
    head = ms.init_params(cfg, jax.random.key(0))
    tp = init_params(TINY, jax.random.key(0))
    ident = assets.target_identity("tiny", TINY, tp)
    d = assets.save_head(tmp_path / "h", "mlp_speculator", cfg, head, ident, {"steps": 3})
    meta, params = assets.load_head(d, ident)
    assert meta["kind"] == "mlp_speculator" and meta["config"]["n_predict"] == 2
    for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    other = assets.target_identity("tiny", TINY, init_params(TINY, jax.random.key(1)))
    with pytest.raises(ValueError, match="is for target 'tiny'.*differing: \\['fingerprint'"):
        assets.load_head(d, other)
    with pytest.raises(FileNotFoundError, match="no trained head"):
        assets.load_head(tmp_path / "nothing")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_flatten_unflatten():
    tree = {"stages": [{"a": np.ones(2)}, {"a": np.zeros(3)}], "vocab_ids": np.arange(4)}
    flat = assets.flatten(tree)
    assert sorted(flat) == ["stages.0.a", "stages.1.a", "vocab_ids"]
    back = assets.unflatten(flat)
    assert isinstance(back["stages"], list) and back["stages"][1]["a"].shape == (3,)

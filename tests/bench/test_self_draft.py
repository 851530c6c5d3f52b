"""bench.experiment.parse_self_draft: the one parser of "self:L" draft specs."""

import jax
import pytest

from specjax.bench.experiment import load_models, parse_self_draft


def test_parse_self_draft():
    assert parse_self_draft("self:10") == 10
    assert parse_self_draft("self:4", num_layers=4) == 4
    assert parse_self_draft("qwen2.5-coder-0.5b") is None and parse_self_draft("") is None
    assert parse_self_draft("models/self:3") is None  # a path, not a self-draft


@pytest.mark.parametrize("spec,num_layers", [("self:x", None), ("self:", None), ("self:0", None),
                                             ("self:-1", 4), ("self:5", 4), ("self:2.5", None)])
def test_bad_self_drafts_are_clear_errors(spec, num_layers):
    top = num_layers if num_layers is not None else "the target's layer count"
    with pytest.raises(ValueError, match=rf"bad self-draft '{spec}': expected self:L, the "
                                         rf"target's first L layers, with L an integer in "
                                         rf"\[1, {top}\]"):
        parse_self_draft(spec, num_layers)


def test_load_models_checks_the_self_draft_against_the_target():
    from specjax.models import params as params_lib
    from specjax.models.config import ModelConfig

    cfg = ModelConfig(arch="llama", vocab_size=64, dim=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=8, ffn_dim=64)
    target = (cfg, params_lib.init_params(cfg, jax.random.key(0)))
    assert load_models("unused", "self:3", "float32", "plain", target=target)[1][0].num_layers == 3
    with pytest.raises(ValueError, match=r"bad self-draft 'self:4'.*\[1, 3\]"):
        load_models("unused", "self:4", "float32", "plain", target=target)
    with pytest.raises(ValueError, match="bad self-draft 'self:x'"):  # before loading a model
        load_models("no-such-model", "self:x", "float32", "plain")

"""bench.experiment.load_models: target and draft (a model, or the target's own first layers)."""

import jax


def test_load_models_self_draft_shares_the_target_layers():
    """`draft_model="self:L"`: the target's first L layers, the same arrays."""
    from specjax.bench.experiment import load_models
    from specjax.models import params as params_lib
    from specjax.models.config import ModelConfig

    cfg = ModelConfig(arch="llama", vocab_size=64, dim=32, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=8, ffn_dim=64)
    params = params_lib.init_params(cfg, jax.random.key(0))
    target, draft = load_models("unused", "self:2", "float32", "plain", target=(cfg, params))
    assert target[1] is params and draft[0].num_layers == 2
    assert draft[1]["layers"][1] is params["layers"][1] and len(draft[1]["layers"]) == 2
    assert load_models("unused", "", "float32", "plain", target=(cfg, params))[1] is None

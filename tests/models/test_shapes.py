"""`jax.eval_shape` of real model configs costs no memory; the decode loop is shape-checked."""

import jax
import jax.numpy as jnp
import pytest

from specjax import decode, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import abstract_params, param_shapes
from specjax.sampling import GREEDY

QWEN = dict(arch="qwen2", qkv_bias=True, rope_theta=1e6, norm_eps=1e-6, head_dim=128)
REAL = {
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, dim=896, num_layers=24, num_heads=14,
                                num_kv_heads=2, ffn_dim=4864, tie_embeddings=True,
                                **{**QWEN, "head_dim": 64}),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, dim=1536, num_layers=28, num_heads=12,
                                num_kv_heads=2, ffn_dim=8960, **QWEN),
    "qwen2.5-7b": ModelConfig(vocab_size=152064, dim=3584, num_layers=28, num_heads=28,
                              num_kv_heads=4, ffn_dim=18944, **QWEN),
}
PARAM_COUNTS = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_777_088_000,
                "qwen2.5-7b": 7_615_616_512}


@pytest.mark.parametrize("name", list(REAL))
def test_eval_shape_of_real_configs(name):
    cfg = REAL[name]
    params = abstract_params(cfg)
    n = sum(int(jnp.prod(jnp.array(x.shape))) for x in jax.tree.leaves(params))
    assert n == PARAM_COUNTS[name]
    cache = kvcache.abstract_cache(cfg, 2, 4096)
    tokens = jax.ShapeDtypeStruct((2, 9), jnp.int32)

    def verify_step(params, tokens, cache):
        mask = decoder.attention_mask(cache.length, 4096, decoder.causal_mask(2, 9))
        pos = cache.length[:, None] + jnp.arange(9)[None]
        return decoder.forward(params, cfg, tokens, pos, cache, mask)

    out = jax.eval_shape(verify_step, params, tokens, cache)
    assert out.logits.shape == (2, 9, cfg.vocab_size)
    assert out.kv.k.shape == (cfg.num_layers, 2, 9, cfg.num_kv_heads, cfg.head_dim)


def test_eval_shape_of_speculative_loop():
    cfg = REAL["qwen2.5-1.5b"]
    dcfg = REAL["qwen2.5-0.5b"]
    method = decode.Method(DraftModel(DecoderLM(dcfg), tuple(trees.kary_topology(2, 3).tolist()),
                                      "topk"), verify.greedy)
    out = jax.eval_shape(
        lambda tp, dp, t, l: decode.speculative_loop(
            tp, dp, t, l, jax.random.key(0), target=DecoderLM(cfg), method=method,
            max_new_tokens=128, sampling=GREEDY, eos_ids=(151645,), max_len=1024),
        abstract_params(cfg), abstract_params(dcfg), jax.ShapeDtypeStruct((4, 256), jnp.int32),
        jax.ShapeDtypeStruct((4,), jnp.int32))
    gen, stats = out
    assert gen.tokens.shape == (4, 128)
    assert stats.accept_hist.shape == (4, 15)


def test_param_shapes_match_hf_names():
    shapes = param_shapes(REAL["qwen2.5-0.5b"])
    assert "lm_head" not in shapes and len(shapes["layers"]) == 24 and shapes["layers"][0]["bq"] == (896,)

"""The panel weight layout (`models.params.panelize`): same model, other layout.

Round trips, shapes, and the decoder's outputs and greedy tokens equal to the
plain layout's for tied/untied, GQA/MHA and biased configs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models import params as P
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM

BASE = dict(vocab_size=96, dim=64, num_layers=2, head_dim=16, ffn_dim=96)
CASES = {
    "llama-gqa-untied": ModelConfig(arch="llama", num_heads=4, num_kv_heads=2, **BASE),
    "qwen2-bias-tied": ModelConfig(arch="qwen2", num_heads=4, num_kv_heads=1, qkv_bias=True,
                                   tie_embeddings=True, **BASE),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def model(request):
    cfg = CASES[request.param]
    return cfg, P.init_params(cfg, jax.random.key(1), scale=0.2)


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_round_trip_and_shapes(model):
    cfg, params = model
    panels = P.panelize(cfg, params)
    assert P.is_panelled(panels) and not P.is_panelled(params)
    assert "lm_head" not in panels
    assert _shapes(panels) == jax.tree.map(
        lambda s: s, P.param_shapes(cfg, panels=True), is_leaf=lambda x: isinstance(x, tuple))
    assert panels["layers"][0]["wq"].ndim == 3 and panels["layers"][0]["attn_norm"].ndim == 1
    back = P.unpanelize(cfg, panels)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert P.panelize(cfg, panels) is panels  # idempotent
    hf = P.params_to_hf_tensors(cfg, panels)  # writers see the plain layout
    for k, v in P.params_to_hf_tensors(cfg, params).items():
        np.testing.assert_array_equal(hf[k], v)


def test_numpy_panels_equal_jax_panels(model):
    cfg, params = model
    host = P.panelize(cfg, jax.tree.map(np.asarray, params))
    assert isinstance(host["layers"][1]["w_down"], np.ndarray)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(P.panelize(cfg, params))):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_with_layout():
    cfg = CASES["llama-gqa-untied"]
    params = P.init_params(cfg, jax.random.key(0))
    assert P.is_panelled(P.with_layout(cfg, params, "auto")) == (jax.default_backend() == "cpu")
    assert not P.is_panelled(P.with_layout(cfg, P.panelize(cfg, params), "plain"))
    with pytest.raises(ValueError, match="layout"):
        P.with_layout(cfg, params, "columns")


@pytest.mark.parametrize("T", [1, 3, 9])
def test_forward_equals_plain_layout(model, T):
    """A tree-shaped verification forward over T tokens against a filled cache."""
    cfg, params = model
    B, S, ctx = 2, 32, 7
    rng = np.random.default_rng(T)
    cache = kvcache.init_cache(cfg, B, S)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, ctx)), jnp.int32)
    _, cache = decoder.prefill(params, cfg, prompt, jnp.full((B,), ctx, jnp.int32), cache)
    parent = trees.kary_topology(2, 3)[:T]
    anc = jnp.asarray(trees.topology_ancestors(parent))[None].repeat(B, 0)  # [B, T, T]
    depth = jnp.asarray(trees.topology_depth(parent))[None]
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    mask = decoder.attention_mask(cache.length, S, anc)
    run = jax.jit(lambda p: decoder.forward(p, cfg, toks, cache.length[:, None] + depth, cache,
                                            mask))
    want, got = run(params), run(P.panelize(cfg, params))
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.kv.k, want.kv.k, rtol=1e-5, atol=1e-5)


def test_greedy_tokens_equal_plain_layout(model):
    cfg, params = model
    prompts = [[5, 9, 2, 7], [11, 3]]
    panels = P.panelize(cfg, params)
    ar = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=12).tokens
    assert decode.autoregressive_generate(panels, cfg, prompts, max_new_tokens=12).tokens == ar
    dcfg, dparams = P.first_layers(cfg, panels, 1)
    method = decode.Method(DraftModel.chain(DecoderLM(dcfg), 3), verify.greedy)
    sd = decode.speculative_generate(panels, cfg, prompts, method=method, draft_params=dparams,
                                     max_new_tokens=12)
    assert sd.tokens == ar


@pytest.mark.parametrize("layout", ["panels", "plain"])
def test_place_consumes_host_params(model, layout):
    cfg, params = model
    host = jax.tree.map(np.asarray, params)
    placed = P.place(cfg, host, layout)
    assert host == {}, "place empties its input as it goes"
    want = P.panelize(cfg, params) if layout == "panels" else params
    assert jax.tree.structure(placed) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(want)):
        assert isinstance(a, jax.Array)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="layout"):
        P.place(cfg, {}, "rows")

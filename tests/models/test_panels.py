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
from specjax.models import layout as L
from specjax.models import params as P
from specjax.models.config import ModelConfig
from specjax.models.layout import LayoutPlan
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
    again = P.panelize(cfg, panels)  # idempotent
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(panels)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
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
    pcfg, panels = P.with_layout(cfg, params, "panels")
    assert P.is_panelled(panels) and pcfg.panel_head_rows == L.ALL_ROWS
    _, plain = P.with_layout(pcfg, panels, "plain")
    assert not P.is_panelled(plain) and "lm_head_panels" not in plain and "lm_head" in plain
    with pytest.raises(ValueError, match="layout"):
        P.with_layout(cfg, params, "columns")


def test_auto_layout_is_the_probed_plan(monkeypatch):
    cfg = CASES["qwen2-bias-tied"]
    params = P.init_params(cfg, jax.random.key(0))
    plan = LayoutPlan(body="plain", head=(2, 4))
    monkeypatch.setattr(L, "probe", lambda c: plan)
    monkeypatch.setattr(L.jax, "default_backend", lambda: "cpu")
    mcfg, mixed = P.with_layout(cfg, params, "auto")
    assert mcfg.panel_head_rows == (2, 4) and not P.is_panelled(mixed)
    assert mixed["lm_head_panels"].ndim == 3 and "lm_head" not in mixed  # tied: embed is plain
    monkeypatch.setattr(L.jax, "default_backend", lambda: "gpu")
    assert L.resolve(cfg, "auto") == L.PLAIN


@pytest.mark.parametrize("case", sorted(CASES))
def test_mixed_layout_picks_the_head_by_rows(case):
    """Plain layers + both heads: the panelled head serves M in panel_head_rows,
    the plain one the rest (a zeroed panelled head shows which one ran)."""
    cfg = CASES[case]
    params = P.init_params(cfg, jax.random.key(2), scale=0.2)
    mcfg, mixed = P.convert(cfg, params, LayoutPlan(body="plain", head=(2, 3)))
    assert not P.is_panelled(mixed) and (cfg.tie_embeddings or "lm_head" in mixed)
    zeroed = dict(mixed, lm_head_panels=jnp.zeros_like(mixed["lm_head_panels"]))
    for m in (1, 2, 3, 4, 6):
        h = jax.random.normal(jax.random.key(m), (m, cfg.dim))
        want = decoder.logits_from_hidden(params, cfg, h)
        np.testing.assert_allclose(decoder.logits_from_hidden(mixed, mcfg, h), want,
                                   rtol=1e-5, atol=1e-5)
        got = np.asarray(decoder.logits_from_hidden(zeroed, mcfg, h))
        assert (not got.any()) == (2 <= m <= 3), m
    back_cfg, back = P.convert(mcfg, mixed, L.PLAIN)
    assert back_cfg.panel_head_rows == L.ALL_ROWS and "lm_head_panels" not in back
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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
    pcfg, placed = P.place(cfg, host, layout)
    assert host == {}, "place empties its input as it goes"
    assert (pcfg.panel_head_rows == L.ALL_ROWS)
    want = P.panelize(cfg, params) if layout == "panels" else params
    assert jax.tree.structure(placed) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(want)):
        assert isinstance(a, jax.Array)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="layout"):
        P.place(cfg, {}, "rows")

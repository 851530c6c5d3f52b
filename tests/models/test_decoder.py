"""Equivalence tests of the decoder: vs transformers, cached vs full, tree vs branches,
run-masked forward vs the model of the layers (or sub-layers) it runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import trees
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig, from_hf_config, to_hf_config
from specjax.models.params import first_layers, init_params, panelize, params_from_hf_tensors

TINY = dict(vocab_size=97, dim=64, num_layers=2, head_dim=16, ffn_dim=96, rope_theta=10000.0,
            norm_eps=1e-6)
CASES = {
    "llama-gqa-untied": ModelConfig(arch="llama", num_heads=4, num_kv_heads=2, **TINY),
    "llama-mha-tied": ModelConfig(arch="llama", num_heads=4, num_kv_heads=4,
                                  tie_embeddings=True, **TINY),
    "qwen2-gqa-bias-tied": ModelConfig(arch="qwen2", num_heads=4, num_kv_heads=1, qkv_bias=True,
                                       tie_embeddings=True, **{**TINY, "rope_theta": 1e6}),
    "qwen2-gqa-bias-untied": ModelConfig(arch="qwen2", num_heads=4, num_kv_heads=2,
                                         qkv_bias=True, **TINY),
}


def torch_model(cfg: ModelConfig, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_cfg = to_hf_config(cfg)
    cls = transformers.LlamaConfig if cfg.arch == "llama" else transformers.Qwen2Config
    conf = cls(**{k: v for k, v in hf_cfg.items() if k not in ("model_type", "architectures")})
    model_cls = (transformers.LlamaForCausalLM if cfg.arch == "llama"
                 else transformers.Qwen2ForCausalLM)
    model = model_cls(conf).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.copy_(1.0 * ("norm" in name) + 0.1 * torch.randn_like(p))
    return model


def params_of(model, cfg):
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return params_from_hf_tensors(cfg, tensors)


def full_forward(params, cfg, tokens):
    B, T = tokens.shape
    cache = kvcache.init_cache(cfg, B, 8)
    mask = decoder.attention_mask(cache.length, 8, decoder.causal_mask(B, T))
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    return decoder.forward(params, cfg, tokens, pos, cache, mask)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name):
    torch = pytest.importorskip("torch")
    cfg = CASES[name]
    model = torch_model(cfg)
    params = params_of(model, cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours = full_forward(params, cfg, jnp.asarray(tokens)).logits
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-5)


def test_config_roundtrip_through_hf():
    for cfg in CASES.values():
        assert from_hf_config(to_hf_config(cfg)) == cfg


def test_cached_steps_equal_full_forward():
    cfg = CASES["llama-gqa-untied"]
    params = init_params(cfg, jax.random.key(1), scale=0.1)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 9)))
    full = full_forward(params, cfg, tokens).logits  # [B, 9, V]
    # Row-dependent prompt lengths: row 0 prefills 4, row 1 prefills 6.
    lengths = jnp.array([4, 6])
    cache = kvcache.init_cache(cfg, 2, 16)
    last, cache = decoder.prefill(params, cfg, tokens[:, :6], lengths, cache)
    np.testing.assert_allclose(last, full[jnp.arange(2), lengths - 1], rtol=1e-5, atol=1e-5)
    step = jax.jit(decoder.decode_step, static_argnums=1)
    for t in range(3):
        tok = tokens[jnp.arange(2), lengths + t]
        logits, cache = step(params, cfg, tok, cache)
        np.testing.assert_allclose(logits, full[jnp.arange(2), lengths + t], rtol=1e-5, atol=1e-5)
    assert cache.length.tolist() == [7, 9]


def test_tree_forward_equals_each_branch():
    """Tree-masked verification logits == running each root-to-leaf branch alone."""
    cfg = CASES["qwen2-gqa-bias-untied"]
    params = init_params(cfg, jax.random.key(2), scale=0.1)
    rng = np.random.default_rng(2)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, 5)))
    # Tree over nodes 0..6 (node 0 = root): 0 -> {1, 2}, 1 -> {3, 4}, 2 -> {5}, 5 -> {6}
    parent = np.array([-1, 0, 0, 1, 1, 2, 5])
    depth = np.array([0, 1, 1, 2, 2, 2, 3])
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, 7)))
    anc = np.zeros((7, 7), bool)
    for i in range(7):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parent[j]
    cache = kvcache.init_cache(cfg, 1, 16)
    _, cache = decoder.prefill(params, cfg, prompt, jnp.array([5]), cache)
    mask = decoder.attention_mask(cache.length, 16, jnp.asarray(anc)[None])
    out = decoder.forward(params, cfg, toks, cache.length[:, None] + jnp.asarray(depth)[None],
                          cache, mask)
    for leaf in (3, 4, 6):
        branch = [i for i in range(7) if anc[leaf, i]]
        seq = jnp.concatenate([prompt, toks[:, branch]], axis=1)
        ref = full_forward_long(params, cfg, seq)
        np.testing.assert_allclose(out.logits[0, branch], ref[0, 5:], rtol=1e-5, atol=1e-5)
    # Committing the path 0 -> 2 -> 5 equals prefilling that branch.
    cache2 = kvcache.commit(cache, out.kv, jnp.array([[0, 2, 5]]), jnp.array([3]))
    ref_cache = kvcache.init_cache(cfg, 1, 16)
    _, ref_cache = decoder.prefill(
        params, cfg, jnp.concatenate([prompt, toks[:, [0, 2, 5]]], 1), jnp.array([8]), ref_cache)
    np.testing.assert_allclose(cache2.k[:, :, :8], ref_cache.k[:, :, :8], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache2.v[:, :, :8], ref_cache.v[:, :, :8], rtol=1e-5, atol=1e-6)
    assert int(cache2.length[0]) == 8


def full_forward_long(params, cfg, tokens):
    B, T = tokens.shape
    cache = kvcache.init_cache(cfg, B, 4)
    mask = decoder.attention_mask(cache.length, 4, decoder.causal_mask(B, T))
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    return decoder.forward(params, cfg, tokens, pos, cache, mask).logits


def test_hidden_layers_returned():
    cfg = CASES["llama-mha-tied"]
    params = init_params(cfg, jax.random.key(3))
    tokens = jnp.zeros((1, 3), jnp.int32)
    cache = kvcache.init_cache(cfg, 1, 4)
    mask = decoder.attention_mask(cache.length, 4, decoder.causal_mask(1, 3))
    pos = jnp.arange(3)[None]
    out = decoder.forward(params, cfg, tokens, pos, cache, mask, hidden_layers=(-1, 1))
    assert out.layer_hidden.shape == (2, 1, 3, cfg.dim)
    np.testing.assert_allclose(out.layer_hidden[0], params["embed"][tokens])
    np.testing.assert_allclose(
        decoder.rms_norm(out.layer_hidden[1], params["final_norm"], cfg.norm_eps), out.hidden,
        rtol=1e-6)


def test_commit_drops_writes_beyond_capacity():
    cfg = CASES["llama-mha-tied"]
    cache = kvcache.init_cache(cfg, 1, 4)
    cache = cache.replace(length=jnp.array([3]))
    blk = kvcache.KVBlock(k=jnp.ones((2, 1, 2, 4, 16)), v=jnp.ones((2, 1, 2, 4, 16)))
    out = kvcache.commit(cache, blk, jnp.array([[0, 1]]), jnp.array([2]))
    assert float(out.k[:, :, 3].min()) == 1.0 and float(out.k[:, :, :3].max()) == 0.0


# ---------------------------------------------------------------------------
# Run mask: layers / sub-layers skipped per row (forward(..., run=, run_mlp=))
# ---------------------------------------------------------------------------

# 4 layers, so that skip sets have intermediate layers to choose from.
MASK_CFG = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=4, num_heads=4,
                       num_kv_heads=2, head_dim=8, ffn_dim=64)
_forward = jax.jit(decoder.forward, static_argnums=1)
_prefill = jax.jit(decoder.prefill, static_argnums=1)


@pytest.fixture(scope="module")
def mask_model():
    """(cfg, params) of a random 4-layer model."""
    return MASK_CFG, init_params(MASK_CFG, jax.random.key(0), scale=0.2)


def _masked(params, cfg, tokens, positions, cache, mask, run, run_mlp=None):
    """(logits, kv) of the jitted forward under the run mask (run, run_mlp)."""
    out = _forward(params, cfg, tokens, positions, cache, mask, run=run, run_mlp=run_mlp)
    return out.logits, out.kv


def kept_model(cfg, params, cache, run):
    """Reference for a skip set: the model made of the kept layers only (and their cache)."""
    keep = [l for l in range(cfg.num_layers) if run[l]]
    sub = dict(params, layers=[params["layers"][l] for l in keep])
    return (cfg.replace(num_layers=len(keep)), sub,
            cache.replace(k=cache.k[np.array(keep)], v=cache.v[np.array(keep)]), keep)


def zeroed_model(params, run_attn, run_mlp):
    """Reference for a sub-layer skip set, independent of the run mask: the
    full model with the output projection of every skipped attention (wo) and
    MLP (w_down) set to zero, so that the block adds exactly 0 to the residual
    stream (a zeroed attention still computes keys/values, never used)."""
    layers = []
    for l, lp in enumerate(params["layers"]):
        lp = dict(lp)
        if not run_attn[l]:
            lp["wo"] = jnp.zeros_like(lp["wo"])
        if not run_mlp[l]:
            lp["w_down"] = jnp.zeros_like(lp["w_down"])
        layers.append(lp)
    return dict(params, layers=layers)


def context_and_tree(cfg, params, B=2, ctx=5, S=16, seed=1):
    """A cache holding `ctx` context tokens and a 4-node tree to run on top of it."""
    rng = np.random.default_rng(seed)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, ctx)), jnp.int32)
    _, cache = _prefill(params, cfg, toks, jnp.full((B,), ctx, jnp.int32),
                        kvcache.init_cache(cfg, B, S))
    tree = trees.Tree(tokens=jnp.asarray(rng.integers(0, cfg.vocab_size, (B, 4)), jnp.int32),
                      parent=jnp.asarray([[-1, 0, 0, 1]] * B, jnp.int32),
                      valid=jnp.ones((B, 4), bool))
    positions = trees.positions(tree, cache.length)
    mask = decoder.attention_mask(cache.length, S, trees.ancestor_mask(tree))
    return cache, tree.tokens, positions, mask


@pytest.mark.parametrize("run", [(1, 1, 1, 1), (1, 1, 0, 0), (1, 0, 1, 1), (0, 1, 0, 1)])
def test_run_mask_equals_the_kept_layers_model(mask_model, run):
    """Empty skip set == the full forward; first l layers == `first_layers`
    (Kangaroo's shallow exit); any set == the model of the kept layers."""
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    logits, kv = _masked(params, cfg, tokens, positions, cache, mask, jnp.asarray(run, bool))
    rcfg, rparams, rcache, keep = kept_model(cfg, params, cache, run)
    if run == (1, 1, 0, 0):
        rcfg, rparams = first_layers(cfg, params, 2)
    want = _forward(rparams, rcfg, tokens, positions, rcache, mask)
    np.testing.assert_allclose(logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kv.k[np.array(keep)], want.kv.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kv.v[np.array(keep)], want.kv.v, rtol=1e-5, atol=1e-6)
    skipped = [l for l in range(4) if not run[l]]
    assert (np.asarray(kv.k[np.array(skipped, int)]) == 0).all()  # skipped: zeros, never read
    if run == (1, 1, 1, 1):
        full = _forward(params, cfg, tokens, positions, cache, mask)
        np.testing.assert_allclose(logits, full.logits, rtol=1e-5, atol=1e-5)


def test_run_mask_on_panelled_weights(mask_model):
    """The masked layers multiply through `decoder.dense`, so the panel layout works too."""
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    run = jnp.asarray([1, 0, 1, 1], bool)
    plain = _masked(params, cfg, tokens, positions, cache, mask, run)[0]
    panels = _masked(panelize(cfg, params), cfg, tokens, positions, cache, mask, run)[0]
    np.testing.assert_allclose(panels, plain, rtol=1e-5, atol=1e-5)


def test_run_mask_per_row_one_compile_and_real_conditionals(mask_model):
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    def f(run):
        return decoder.forward(params, cfg, tokens, positions, cache, mask, run=run).logits

    fwd = jax.jit(f)
    runs = np.array([[1, 0, 1, 1], [1, 1, 0, 0]], bool)  # a different set per row
    got = fwd(jnp.asarray(runs))
    for b in range(2):
        rcfg, rparams, rcache, _ = kept_model(cfg, params, cache, runs[b])
        want = _forward(rparams, rcfg, tokens, positions, rcache, mask).logits
        np.testing.assert_allclose(got[b], want[b], rtol=1e-5, atol=1e-5)
    fwd(jnp.asarray([[1, 1, 1, 1]] * 2, bool))
    assert fwd._cache_size() == 1, "a new skip set recompiled"
    # every layer is a lax.cond (its compute is skipped when no row runs it)
    jaxpr = jax.make_jaxpr(f)(jnp.asarray(runs)).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == cfg.num_layers


SUBLAYER_SETS = [  # (attention runs, MLP runs)
    ((1, 1, 1, 1), (1, 1, 1, 1)),
    ((1, 1, 1, 1), (1, 0, 1, 1)),  # one MLP skipped
    ((1, 0, 1, 1), (1, 1, 1, 1)),  # one attention skipped
    ((1, 0, 1, 1), (1, 1, 0, 1)),
    ((1, 1, 0, 1), (1, 1, 0, 1)),  # a whole layer
    ((0, 1, 0, 1), (1, 0, 1, 0)),
]


@pytest.mark.parametrize("run_attn,run_mlp", SUBLAYER_SETS)
def test_sublayer_run_mask_equals_zeroed_output_projections(mask_model, run_attn, run_mlp):
    """A skipped sub-layer adds nothing to the residual stream: logits equal
    those of the full model with that sub-layer's output projection zeroed;
    the keys/values of a running attention are that model's, a skipped
    attention (in every row) writes zeros."""
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    ra, rm = np.asarray(run_attn, bool), np.asarray(run_mlp, bool)
    logits, kv = _masked(params, cfg, tokens, positions, cache, mask, jnp.asarray(ra),
                         jnp.asarray(rm))
    want = _forward(zeroed_model(params, ra, rm), cfg, tokens, positions, cache, mask)
    np.testing.assert_allclose(logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kv.k[ra], want.kv.k[ra], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kv.v[ra], want.kv.v[ra], rtol=1e-5, atol=1e-6)
    assert (np.asarray(kv.k[~ra]) == 0).all() and (np.asarray(kv.v[~ra]) == 0).all()
    if (ra == rm).all():  # whole layers: the same as the layer-granularity forward
        layer = _masked(params, cfg, tokens, positions, cache, mask, jnp.asarray(ra))[0]
        np.testing.assert_allclose(logits, layer, rtol=1e-6, atol=1e-6)
    if not (ra == rm).all():  # a sub-layer skip really differs from running it
        full = _forward(params, cfg, tokens, positions, cache, mask).logits
        assert np.abs(np.asarray(logits) - np.asarray(full)).max() > 1e-3


def test_skipped_mlp_is_the_identity_after_attention(mask_model):
    """Manual check on a 1-layer slice: with layer l's MLP skipped, the hidden
    state after layer l is exactly x + attention(x) (`decoder.attention_block`
    alone), and with its attention skipped it is x + mlp(x)."""
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    sub = dict(params, layers=params["layers"][:1])
    c1 = cache.replace(k=cache.k[:1], v=cache.v[:1])
    cfg1 = cfg.replace(num_layers=1)
    x = params["embed"][tokens]
    lp = params["layers"][0]
    attn_only, _, _ = decoder.attention_block(cfg, x, lp, c1.k[0], c1.v[0], positions, mask)
    mlp_only = decoder.mlp_block(cfg, x, lp)
    head = lambda h: decoder.logits_from_hidden(  # noqa: E731
        params, cfg, decoder.rms_norm(h, params["final_norm"], cfg.norm_eps))
    for ra, rm, h in ((True, False, attn_only), (False, True, mlp_only), (False, False, x)):
        got = _masked(sub, cfg1, tokens, positions, c1, mask, jnp.asarray([ra]),
                      jnp.asarray([rm]))[0]
        np.testing.assert_allclose(got, head(h), rtol=1e-6, atol=1e-6)


def test_sublayer_forward_per_row_masks_one_compile_and_two_conds_per_layer(mask_model):
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)

    def f(ra, rm):
        return decoder.forward(params, cfg, tokens, positions, cache, mask, run=ra,
                               run_mlp=rm).logits

    fwd = jax.jit(f)
    ras = np.array([SUBLAYER_SETS[2][0], SUBLAYER_SETS[5][0]], bool)
    rms = np.array([SUBLAYER_SETS[2][1], SUBLAYER_SETS[5][1]], bool)
    got = fwd(jnp.asarray(ras), jnp.asarray(rms))
    for b in range(2):
        want = _forward(zeroed_model(params, ras[b], rms[b]), cfg, tokens, positions, cache, mask)
        np.testing.assert_allclose(got[b], want.logits[b], rtol=1e-5, atol=1e-5)
    fwd(jnp.ones((2, 4), bool), jnp.asarray(rms[::-1]))
    assert fwd._cache_size() == 1, "a new skip set recompiled"
    jaxpr = jax.make_jaxpr(f)(jnp.asarray(ras), jnp.asarray(rms)).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 2 * cfg.num_layers


def test_run_mask_of_every_layer_equals_the_unmasked_forward(mask_model):
    """A mask that runs everything (whole layers, sub-layers, or one bool[L]
    shared by the rows) gives the unmasked forward's outputs, hidden states
    included; the unmasked forward has no conditionals at all (the default
    path costs nothing extra); a skipped layer passes its input through."""
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    B, L = tokens.shape[0], cfg.num_layers
    hl = (-1, 0, 1, 2, 3)
    fwd = jax.jit(decoder.forward, static_argnums=(1, 6))
    full = fwd(params, cfg, tokens, positions, cache, mask, hl)
    for run, run_mlp in ((jnp.ones((B, L), bool), None), (jnp.ones((L,), bool), None),
                         (jnp.ones((B, L), bool), jnp.ones((B, L), bool))):
        got = fwd(params, cfg, tokens, positions, cache, mask, hl, run=run, run_mlp=run_mlp)
        for a, b in ((got.logits, full.logits), (got.hidden, full.hidden),
                     (got.layer_hidden, full.layer_hidden), (got.kv.k, full.kv.k),
                     (got.kv.v, full.kv.v)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    jaxpr = jax.make_jaxpr(
        lambda p: decoder.forward(p, cfg, tokens, positions, cache, mask, hl))(params)
    assert not [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
    # layer 2 skipped by every row: its output is exactly its input
    got = fwd(params, cfg, tokens, positions, cache, mask, hl, run=jnp.asarray([1, 1, 0, 1], bool))
    np.testing.assert_array_equal(got.layer_hidden[3], got.layer_hidden[2])
    np.testing.assert_allclose(got.layer_hidden[2], full.layer_hidden[2], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(got.logits - full.logits)).max() > 1e-3


def test_run_mask_bad_input(mask_model):
    cfg, params = mask_model
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    with pytest.raises(ValueError, match="run_mlp"):
        decoder.forward(params, cfg, tokens, positions, cache, mask, run_mlp=jnp.ones(4, bool))
    short = cache.replace(k=cache.k[:2], v=cache.v[:2])
    with pytest.raises(ValueError, match="cache of all 4 layers"):
        decoder.forward(params, cfg, tokens, positions, short, mask, run=jnp.ones(4, bool))

"""Equivalence tests of the decoder: vs transformers, cached vs full, tree vs branches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig, from_hf_config, to_hf_config
from specjax.models.params import init_params, params_from_hf_tensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

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

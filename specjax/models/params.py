"""The parameter pytree of the decoder and its conversion from HF tensor names.

Layout (layers are stacked on a leading axis L so the forward can `lax.scan`
over them; matrices are stored [in, out] so activations multiply on the left):

    params = {
      "embed":      [V, D],
      "layers": {
        "attn_norm": [L, D],
        "wq": [L, D, N*H],  "wk": [L, D, K*H],  "wv": [L, D, K*H],
        "bq": [L, N*H],     "bk": [L, K*H],     "bv": [L, K*H],   # qkv_bias only
        "wo": [L, N*H, D],
        "mlp_norm": [L, D],
        "w_gate": [L, D, F], "w_up": [L, D, F], "w_down": [L, F, D],
      },
      "final_norm": [D],
      "lm_head":    [D, V],                                      # untied only
    }

Every loader (HF safetensors directories, GGUF files) produces a mapping from
HuggingFace tensor names (`model.layers.3.self_attn.q_proj.weight`, ...) to
numpy arrays in HF's [out, in] layout, and `params_from_hf_tensors` turns it
into this pytree. That one function is the only place that knows both naming
schemes.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from specjax.models.config import ModelConfig

Params = dict

_LAYER_TENSORS = {
    # our name: (HF name inside layer i, transpose?)
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}
_BIAS_TENSORS = {
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
}


def param_shapes(cfg: ModelConfig) -> Params:
    """Shapes of the parameter pytree (as tuples) for `cfg`."""
    L, D, F, V = cfg.num_layers, cfg.dim, cfg.ffn_dim, cfg.vocab_size
    NH, KH = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layers = {
        "attn_norm": (L, D),
        "wq": (L, D, NH),
        "wk": (L, D, KH),
        "wv": (L, D, KH),
        "wo": (L, NH, D),
        "mlp_norm": (L, D),
        "w_gate": (L, D, F),
        "w_up": (L, D, F),
        "w_down": (L, F, D),
    }
    if cfg.qkv_bias:
        layers.update(bq=(L, NH), bk=(L, KH), bv=(L, KH))
    shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def abstract_params(cfg: ModelConfig) -> Params:
    """`jax.ShapeDtypeStruct` pytree of the parameters (no memory)."""
    dtype = jnp.dtype(cfg.dtype)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, dtype),
        param_shapes(cfg),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def init_params(cfg: ModelConfig, key: jax.Array, scale: float = 0.02) -> Params:
    """Random parameters (normal(0, scale) matrices, unit norms), for tests."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    dtype = jnp.dtype(cfg.dtype)
    out = []
    for k, shape, path in zip(keys, leaves, paths):
        if "norm" in path:
            out.append(jnp.ones(shape, dtype) + 0.1 * jax.random.normal(k, shape, dtype))
        else:
            out.append(scale * jax.random.normal(k, shape, dtype))
    return jax.tree.unflatten(treedef, out)


def params_from_hf_tensors(
    cfg: ModelConfig, tensors: Mapping[str, np.ndarray], dtype=None
) -> Params:
    """Converts HF-named tensors ([out, in] layout) to the specjax pytree.

    Args:
      cfg: the model config; decides which tensors must be present.
      tensors: mapping from HF names to arrays. Extra tensors (e.g.
        `rotary_emb.inv_freq`) are ignored; a missing one raises KeyError
        naming it. A tied model may still carry `lm_head.weight`; it is
        ignored.
      dtype: target dtype, default `cfg.dtype`.

    Returns:
      The parameter pytree, as numpy arrays (place them with `jax.device_put`
      or a sharding).
    """
    dtype = np.dtype(jnp.dtype(dtype or cfg.dtype))

    def get(name):
        if name not in tensors:
            raise KeyError(f"checkpoint is missing tensor {name!r}")
        return np.asarray(tensors[name])

    def stack(hf_suffix, transpose):
        arrs = []
        for i in range(cfg.num_layers):
            a = get(f"model.layers.{i}.{hf_suffix}")
            arrs.append(a.T if transpose else a)
        return np.stack(arrs).astype(dtype, copy=False)

    layers = {ours: stack(hf, t) for ours, (hf, t) in _LAYER_TENSORS.items()}
    if cfg.qkv_bias:
        layers.update({ours: stack(hf, False) for ours, hf in _BIAS_TENSORS.items()})
    params = {
        "embed": get("model.embed_tokens.weight").astype(dtype, copy=False),
        "layers": layers,
        "final_norm": get("model.norm.weight").astype(dtype, copy=False),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = get("lm_head.weight").T.astype(dtype, copy=False)
    _check_shapes(cfg, params)
    return params


def params_to_hf_tensors(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """Inverse of `params_from_hf_tensors` (used to write HF checkpoints)."""
    out = {
        "model.embed_tokens.weight": np.asarray(params["embed"]),
        "model.norm.weight": np.asarray(params["final_norm"]),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"]).T
    names = {k: v for k, v in _LAYER_TENSORS.items()}
    if cfg.qkv_bias:
        names.update({k: (v, False) for k, v in _BIAS_TENSORS.items()})
    for ours, (hf, t) in names.items():
        stacked = np.asarray(params["layers"][ours])
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{hf}"] = stacked[i].T if t else stacked[i]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _check_shapes(cfg: ModelConfig, params: Params) -> None:
    want = param_shapes(cfg)
    flat_want = dict(jax.tree_util.tree_flatten_with_path(
        want, is_leaf=lambda x: isinstance(x, tuple))[0])
    flat_have = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, shape in flat_want.items():
        have = flat_have[path].shape
        if tuple(have) != tuple(shape):
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path)} has shape {have}, config expects {shape}"
            )


def count_params(params: Params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def first_layers(cfg: ModelConfig, params: Params, num_layers: int) -> tuple[ModelConfig, Params]:
    """A shallow copy of the model: its first `num_layers` layers + final norm + LM head.

    This is the simplest self-drafter (an early exit without a trained
    adapter, cf. Kangaroo arXiv:2404.18911); the arrays are slices, not copies
    of the shared tensors.
    """
    if not 1 <= num_layers <= cfg.num_layers:
        raise ValueError(f"num_layers must be in [1, {cfg.num_layers}], got {num_layers}")
    sliced = dict(params, layers=jax.tree.map(lambda x: x[:num_layers], params["layers"]))
    return cfg.replace(num_layers=num_layers), sliced

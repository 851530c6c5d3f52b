"""The parameter pytree of the decoder and its conversion from HF tensor names.

Layout (one dict per layer in a list; matrices are stored [in, out] so
activations multiply on the left):

    params = {
      "embed":      [V, D],
      "layers": [                       # L entries
        {
          "attn_norm": [D],
          "wq": [D, N*H],  "wk": [D, K*H],  "wv": [D, K*H],
          "bq": [N*H],     "bk": [K*H],     "bv": [K*H],        # qkv_bias only
          "wo": [N*H, D],
          "mlp_norm": [D],
          "w_gate": [D, F], "w_up": [D, F], "w_down": [F, D],
        }, ...
      ],
      "final_norm": [D],
      "lm_head":    [D, V],                                      # untied only
    }

Why a list and not arrays stacked on a layer axis for `lax.scan`: on XLA:CPU a
`scan` over stacked weights dynamic-slices (copies) every layer's matrices on
every step before the matmul, which measured 2x slower for SmolLM2-135M decode
steps (60 ms vs 31 ms for the matmuls alone); separate per-layer buffers feed
the matmuls directly. The forward unrolls the layers instead.

On CPU the matrices can also be stored in the panel layout of
`models.linear` (`panelize`: each [Din, Dout] matrix as [Dout/P, Din, P]
panels, the LM head as `lm_head_panels`), which `linear.dense` multiplies
without XLA:CPU's per-call weight repacking. Which layout is faster depends
on the CPU, so `with_layout(cfg, params, "auto")` / `place` measure it once per
machine (`models.layout`, which owns the choice: `LayoutPlan`, `resolve`) and
may mix them: plain layer matrices with the LM head in both layouts, picked per
forward by its row count (`ModelConfig.panel_head_rows`). Loaders always return
the plain layout.

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

from specjax.models import linear
from specjax.models.config import ModelConfig, Params  # Params: re-exported for older imports
from specjax.models.layout import ALL_ROWS, PANELS, PLAIN, LayoutPlan, resolve

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


def param_shapes(cfg: ModelConfig, panels: bool = False) -> Params:
    """Shapes of the parameter pytree (as tuples) for `cfg` (`panels`: of
    `panelize(cfg, params)`)."""
    D, F, V = cfg.dim, cfg.ffn_dim, cfg.vocab_size
    NH, KH = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layer = {
        "attn_norm": (D,),
        "wq": (D, NH),
        "wk": (D, KH),
        "wv": (D, KH),
        "wo": (NH, D),
        "mlp_norm": (D,),
        "w_gate": (D, F),
        "w_up": (D, F),
        "w_down": (F, D),
    }
    if cfg.qkv_bias:
        layer.update(bq=(NH,), bk=(KH,), bv=(KH,))
    layers = [dict(layer) for _ in range(cfg.num_layers)]
    shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, V)
    if panels:
        for lp in layers:
            lp.update({k: panel_shape(lp[k]) for k in PANELLED})
        shapes.pop("lm_head", None)
        shapes["lm_head_panels"] = panel_shape((D, V))
    return shapes


# ---------------------------------------------------------------------------
# The CPU panel layout (models.linear)
# ---------------------------------------------------------------------------

PANELLED = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")  # per-layer matrices


def panel_shape(shape: tuple[int, int]) -> tuple[int, int, int]:
    """[Din, Dout] -> the shape of `linear.prepare_weight`: [Dout/P, Din, P]."""
    din, dout = shape
    p = linear.panel_width(dout, linear.default_panel(din))
    return (dout // p, din, p)


def is_panelled(params: Params) -> bool:
    """Whether the layer matrices are in the panel layout."""
    return params["layers"][0]["wq"].ndim == 3 if params.get("layers") else False


def panelize(cfg: ModelConfig, params: Params) -> Params:
    """The same model with every matrix in the panel layout of `models.linear`.

    Layer matrices [Din, Dout] become [Dout/P, Din, P] (same numbers, same
    memory) and the LM head becomes `lm_head_panels` [V/P, D, P]; with tied
    embeddings that is a second copy of the embedding (+V*D floats: 113 MB for
    SmolLM2-135M, 933 MB for Qwen2.5-1.5B), since the token lookup still reads
    `embed` [V, D]. `linear.dense` multiplies either layout, so the decoder,
    drafters and caches are unchanged; only the speed differs (see
    `models.linear`, `models.layout` and the README's performance
    section). Results equal the plain layout up to float32 summation order.
    Works on numpy (loaders) and jax arrays; `unpanelize` inverts it.
    """
    return convert(cfg, params, PANELS)[1]


def unpanelize(cfg: ModelConfig, params: Params) -> Params:
    """Inverse of `panelize`: the plain [Din, Dout] layout of this module."""
    return convert(cfg, params, PLAIN)[1]


def _body_weight(name: str, w, body: str):
    """A layer leaf in the body layout `body` (only the `PANELLED` matrices change)."""
    if name in PANELLED and body == "panels" and w.ndim == 2:
        return linear.prepare_weight(w)
    if name in PANELLED and body == "plain" and w.ndim == 3:
        return linear.unprepare_weight(w)
    return w


def convert(cfg: ModelConfig, params: Params, plan: LayoutPlan, put=None,
            consume: bool = False) -> tuple[ModelConfig, Params]:
    """`(cfg, params)` in the layout `plan`, from either layout.

    Layer matrices are panelled iff `plan.body == "panels"`. The LM head is
    kept panelled (`lm_head_panels`) iff `plan.head` is set, and plain
    (`lm_head`; the embedding itself when tied) unless the panelled head serves
    every row count; `cfg.panel_head_rows` is set to `plan.head`, which
    `decoder.logits_from_hidden` reads to pick one by the static row count.

    put: `put(path, leaf)` -> the output leaf, applied to every output leaf;
    `path` is its place in the output pytree as dict keys and list indices
    (("embed",), ("layers", 3, "wq"), ...), e.g. to pick its sharding (`place`).
    With `consume` the input dicts are emptied as leaves are converted, so
    that host and device copies do not coexist (see `place`).
    """
    put = put or (lambda path, a: a)
    take = dict.pop if consume else dict.__getitem__
    heads = {k: take(params, k) for k in ("lm_head", "lm_head_panels") if k in params}
    out: Params = {}
    if plan.head is not None:
        if "lm_head_panels" in heads:
            head = heads["lm_head_panels"]
        elif cfg.tie_embeddings:
            head = linear.prepare_weight_out_in(params["embed"])
        else:
            head = linear.prepare_weight(heads["lm_head"])
        out["lm_head_panels"] = put(("lm_head_panels",), head)
        del head
    if not cfg.tie_embeddings and plan.head != ALL_ROWS:
        head = heads.get("lm_head")
        out["lm_head"] = put(("lm_head",), head if head is not None
                             else linear.unprepare_weight(heads["lm_head_panels"]))
        del head
    del heads  # with consume: the host heads go before the layers are converted
    out["layers"] = [{k: put(("layers", i, k), _body_weight(k, take(lp, k), plan.body))
                      for k in list(lp)}
                     for i, lp in enumerate(take(params, "layers"))]
    for k in [k for k in params if k not in ("layers", "lm_head", "lm_head_panels")]:
        out[k] = put((k,), take(params, k))
    return cfg.replace(panel_head_rows=plan.head or ALL_ROWS), out


def with_layout(cfg: ModelConfig, params: Params,
                layout: str | LayoutPlan = "auto") -> tuple[ModelConfig, Params]:
    """`(cfg, params)` in the weight layout `layout` ("plain", "panels",
    "auto" or a `LayoutPlan`, see `models.layout.resolve`); the returned cfg
    carries which row counts use the panelled LM head. Works on numpy and jax
    arrays."""
    return convert(cfg, params, resolve(cfg, layout))


def place(cfg: ModelConfig, params: Params, layout: str | LayoutPlan = "auto",
          mesh=None) -> tuple[ModelConfig, Params]:
    """Host (numpy) params -> `(cfg, device params)` in `layout` (see
    `with_layout`), one matrix at a time, consuming `params`.

    `jax.device_put(with_layout(cfg, params))` holds three full copies at its
    peak (host plain, host panels, device), 20 GB for Qwen2.5-1.5B in float32;
    this converts and places leaf by leaf and drops each host array from
    `params` (which is emptied), so the peak is one model plus one matrix.

    mesh: a `jax.sharding.Mesh`: every leaf goes straight into its shards by
    `sharding.RULES` (`sharding.put_sharded`), no device holding a full copy
    of a sharded matrix; None: the default device.
    """
    if mesh is None:
        put = lambda path, a: jax.device_put(a)  # noqa: E731
    else:
        from specjax import sharding  # sharding imports this module

        put = sharding.put_sharded(mesh)
    return convert(cfg, params, resolve(cfg, layout), put=put, consume=True)


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

    def layer(i):
        names = dict(_LAYER_TENSORS)
        if cfg.qkv_bias:
            names.update({ours: (hf, False) for ours, hf in _BIAS_TENSORS.items()})
        out = {}
        for ours, (hf, transpose) in names.items():
            a = get(f"model.layers.{i}.{hf}")
            out[ours] = np.ascontiguousarray((a.T if transpose else a).astype(dtype, copy=False))
        return out

    layers = [layer(i) for i in range(cfg.num_layers)]
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
    params = unpanelize(cfg, params)
    out = {
        "model.embed_tokens.weight": np.asarray(params["embed"]),
        "model.norm.weight": np.asarray(params["final_norm"]),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"]).T
    names = {k: v for k, v in _LAYER_TENSORS.items()}
    if cfg.qkv_bias:
        names.update({k: (v, False) for k, v in _BIAS_TENSORS.items()})
    for i, lp in enumerate(params["layers"]):
        for ours, (hf, t) in names.items():
            a = np.asarray(lp[ours])
            out[f"model.layers.{i}.{hf}"] = a.T if t else a
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
    adapter, cf. Kangaroo arXiv:2404.18911); the layer arrays are shared with the
    full model, not copied.
    """
    if not 1 <= num_layers <= cfg.num_layers:
        raise ValueError(f"num_layers must be in [1, {cfg.num_layers}], got {num_layers}")
    return cfg.replace(num_layers=num_layers), dict(params, layers=params["layers"][:num_layers])

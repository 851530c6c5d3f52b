"""Device meshes and the one table of partition rules for params and caches.

Every array carries logical axis names (below); `RULES` maps a logical axis to
a mesh axis. The defaults shard the batch over "data" and attention heads, MLP
width and vocabulary over "model", the Megatron layout, so the same jitted loop
runs unchanged on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice. A dimension
that a mesh axis does not divide is replicated instead (tiny test models).

Usage:
    mesh = make_mesh(data=2, model=4)
    params = shard_params(params, cfg, mesh)
    with jax.set_mesh(mesh):
        out = speculative_generate(...)    # caches are constrained inside jit
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from specjax.models.config import ModelConfig
from specjax.models.params import param_shapes

# logical axis -> mesh axis (None = replicated)
RULES: dict[str, str | None] = {
    "batch": "data",
    "vocab": "model",
    "embed": None,
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "layers": None,
    "seq": None,
    "head_dim": None,
}

PARAM_AXES = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "lm_head_panels": ("embed", "vocab"),  # as lm_head, panelled
    "final_norm": ("embed",),
    "layers": {  # every entry of the per-layer list
        "attn_norm": ("embed",),
        "mlp_norm": ("embed",),
        "wq": ("embed", "heads"),
        "wk": ("embed", "kv_heads"),
        "wv": ("embed", "kv_heads"),
        "bq": ("heads",),
        "bk": ("kv_heads",),
        "bv": ("kv_heads",),
        "wo": ("heads", "embed"),
        "w_gate": ("embed", "mlp"),
        "w_up": ("embed", "mlp"),
        "w_down": ("mlp", "embed"),
    },
}
CACHE_AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")  # KVCache.k / .v


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A ("data", "model") mesh over the first data*model devices."""
    devices = list(devices if devices is not None else jax.devices())
    if data * model > len(devices):
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, "
                         f"have {len(devices)}")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), ("data", "model"))


def spec_for(axes: tuple[str, ...], shape: tuple[int, ...], mesh_shape: dict[str, int]) -> PartitionSpec:
    """PartitionSpec of an array with logical `axes`; indivisible dims are replicated."""
    out = []
    for ax, dim in zip(axes, shape):
        m = RULES.get(ax)
        out.append(m if m is not None and m in mesh_shape and dim % mesh_shape[m] == 0 else None)
    return PartitionSpec(*out)


def param_shardings(cfg: ModelConfig, mesh: Mesh, panels: bool = False, shapes=None):
    """NamedSharding pytree matching `shapes` (a pytree of shape tuples; default
    `models.params.param_shapes(cfg, panels)`).

    A panelled matrix [Dout/P, Din, P] (`models.params.panelize`) is sharded
    like its [Din, Dout] original: Dout on the panel axis, whole panels per
    device.
    """
    shapes = param_shapes(cfg, panels) if shapes is None else shapes
    mshape = dict(mesh.shape)

    def one(path, shape):
        axes = PARAM_AXES
        for k in path:
            if isinstance(k, jax.tree_util.DictKey):  # list indices share one entry
                axes = axes[k.key]
        if len(shape) == 3:  # panels of an (in, out) matrix
            axes = (axes[1], axes[0], None)
        return NamedSharding(mesh, spec_for(axes, shape, mshape))

    return jax.tree_util.tree_map_with_path(one, shapes, is_leaf=lambda x: isinstance(x, tuple))


def shard_params(params, cfg: ModelConfig, mesh: Mesh):
    """Places the parameters (plain or panelled layout) on the mesh according to `RULES`."""
    shapes = jax.tree.map(lambda a: tuple(a.shape), params)
    return jax.device_put(params, param_shardings(cfg, mesh, shapes=shapes))


def constrain_cache(cache):
    """Inside jit: shard a KVCache's k/v by `CACHE_AXES` if a mesh is set (else no-op)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not hasattr(cache, "k"):
        return cache
    mshape = dict(mesh.shape)
    spec = spec_for(CACHE_AXES, cache.k.shape, mshape)
    batch_spec = spec_for(("batch",), cache.length.shape, mshape)
    return cache.replace(
        k=jax.lax.with_sharding_constraint(cache.k, spec),
        v=jax.lax.with_sharding_constraint(cache.v, spec),
        length=jax.lax.with_sharding_constraint(cache.length, batch_spec),
    )

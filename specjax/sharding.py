"""Device meshes and the one table of partition rules for params and caches.

Every array carries logical axis names (below); `RULES` maps a logical axis to
a mesh axis. The defaults shard the batch over "data" and attention heads, MLP
width and vocabulary over "model", the Megatron layout, so the same jitted loop
runs unchanged on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice. A dimension
that a mesh axis does not divide is replicated instead (tiny test models).

Usage:
    mesh = parse_mesh("data:2,model:4")    # or make_mesh(data=2, model=4)
    cfg, params = models.params.place(cfg, host_params, mesh=mesh)  # host -> shards
    params = shard_params(params, cfg, mesh)     # or: params already on a device
    with jax.set_mesh(mesh):
        out = speculative_generate(...)    # caches are constrained inside jit

`bytes_per_device` estimates what a mesh leaves on each device (params and KV
cache), `default_dtype` is the benchmarks' "auto" dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
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
MESH_AXES = ("data", "model")


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A ("data", "model") mesh over the first data*model devices."""
    devices = list(devices if devices is not None else jax.devices())
    if data * model > len(devices):
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, "
                         f"have {len(devices)}")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), ("data", "model"))


def parse_mesh_shape(spec: str) -> dict[str, int]:
    """"data:2,model:4" -> {"data": 2, "model": 4}; either axis optional, "" -> {}.

    Raises:
      ValueError: naming the bad part (not AXIS:SIZE, an axis other than
        `MESH_AXES`, a size that is not a positive integer, an axis given twice).
    """
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, size = (x.strip() for x in part.partition(":"))
        if not sep:
            raise ValueError(f"mesh {spec!r}: {part!r} is not AXIS:SIZE (e.g. data:2,model:4)")
        if name not in MESH_AXES:
            raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; valid: {MESH_AXES}")
        if name in out:
            raise ValueError(f"mesh {spec!r}: axis {name!r} is given twice")
        n = int(size) if size.isdigit() else 0
        if n < 1:
            raise ValueError(f"mesh {spec!r}: the size of {name!r} must be a positive integer, "
                             f"got {size!r}")
        out[name] = n
    return out


def parse_mesh(spec: str, devices=None) -> Mesh | None:
    """The ("data", "model") mesh of a spec such as "data:2,model:4" (`parse_mesh_shape`;
    a missing axis has size 1), over the first devices of `jax.devices()`; "" -> None.

    Raises:
      ValueError: a bad spec, or one that needs more devices than there are.
    """
    shape = parse_mesh_shape(spec)
    if not shape:
        return None
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(shape.values())
    if need > len(devices):
        raise ValueError(
            f"mesh {spec!r} needs {need} devices but jax.devices() has {len(devices)} "
            f"({devices[0].platform}); on CPU, fake devices come from setting "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} before JAX starts")
    return make_mesh(shape.get("data", 1), shape.get("model", 1), devices)


def default_dtype() -> str:
    """The "auto" parameter dtype: float32 on CPU (XLA:CPU's bfloat16 matmuls are
    slow), bfloat16 on GPU / TPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def resolve_dtype(dtype: str) -> str:
    """`dtype`, with "auto" replaced by `default_dtype()`."""
    return default_dtype() if dtype == "auto" else dtype


def spec_for(axes: tuple[str, ...], shape: tuple[int, ...], mesh_shape: dict[str, int]) -> PartitionSpec:
    """PartitionSpec of an array with logical `axes`; indivisible dims are replicated."""
    out = []
    for ax, dim in zip(axes, shape):
        m = RULES.get(ax)
        out.append(m if m is not None and m in mesh_shape and dim % mesh_shape[m] == 0 else None)
    return PartitionSpec(*out)


def param_axes(path: tuple, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter at `path` (dict keys and list indices, e.g.
    ("layers", 3, "wq")) with `ndim` dimensions.

    A panelled matrix [Dout/P, Din, P] (`models.params.panelize`) is sharded
    like its [Din, Dout] original: Dout on the panel axis, whole panels per
    device.
    """
    axes = PARAM_AXES
    for k in path:
        if isinstance(k, str):  # list indices share one entry
            axes = axes[k]
    if ndim == 3:  # panels of an (in, out) matrix
        axes = (axes[1], axes[0], None)
    return axes


def param_sharding(path: tuple, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """NamedSharding of the parameter at `path` (see `param_axes`) with `shape`."""
    return NamedSharding(mesh, spec_for(param_axes(path, len(shape)), shape, dict(mesh.shape)))


def param_shardings(cfg: ModelConfig, mesh: Mesh, panels: bool = False, shapes=None):
    """NamedSharding pytree matching `shapes` (a pytree of shape tuples; default
    `models.params.param_shapes(cfg, panels)`); plain or panelled leaves (`param_axes`)."""
    shapes = param_shapes(cfg, panels) if shapes is None else shapes

    return jax.tree_util.tree_map_with_path(lambda path, shape: param_sharding(
        _keys(path), shape, mesh), shapes, is_leaf=lambda x: isinstance(x, tuple))


def _keys(path) -> tuple:
    """A jax key path as plain dict keys and list indices."""
    return tuple(k.key if isinstance(k, jax.tree_util.DictKey) else k.idx for k in path)


def put_sharded(mesh: Mesh):
    """A `models.params.convert` `put`: each leaf straight into its shards on `mesh`.

    `jax.make_array_from_callback` asks for the slice of every addressable
    device only, so no device ever holds a full copy of a sharded matrix and,
    on several hosts, each process supplies just its own shards (from its own
    host copy of the checkpoint).
    """
    def put(path: tuple, host):
        sharding = param_sharding(path, tuple(host.shape), mesh)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return put


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


def sharded_size(axes: tuple, shape: tuple[int, ...], mesh_shape: dict[str, int]) -> int:
    """Elements per device of an array with logical `axes` under `RULES` (replicated dims
    counted fully)."""
    spec = spec_for(axes, shape, mesh_shape)
    return math.prod(d // mesh_shape[m] if m else d for d, m in zip(shape, spec))


def bytes_per_device(cfg: ModelConfig, mesh_shape: dict[str, int], batch: int, max_len: int,
                     dtype: str = "bfloat16") -> dict[str, int]:
    """Per-device memory of the target's params (plain layout) and its KV cache (k and v,
    [L, B, max_len, K, H] each) under `RULES`, in bytes: {"params", "kv_cache", "total"}.

    Only the persistent arrays: activations, logits and a draft model come on top.
    """
    itemsize = jnp.dtype(dtype).itemsize
    shapes = jax.tree_util.tree_flatten_with_path(
        param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))[0]
    params = sum(sharded_size(param_axes(_keys(path), len(shape)), shape, mesh_shape)
                 for path, shape in shapes)
    cache = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    kv = 2 * sharded_size(CACHE_AXES, cache, mesh_shape)
    return dict(params=params * itemsize, kv_cache=kv * itemsize,
                total=(params + kv) * itemsize)

"""The dense layer y = x @ w, shaped so that verifying a few tokens on CPU costs
about as much as decoding one.

LAYOUT CHANGE: `linear` does not take the [Din, Dout] matrix that
`models.params` stores. Convert every matrix once with `prepare_weight(w)`
(numpy or jax, at load time, outside jit) and pass the result:

    wp = prepare_weight(w)     # [Din, Dout] -> [Dout/P, Din, P], P = 32 panels
    y = linear(x, wp)          # x [..., T, Din] float32 -> [..., T, Dout]

`prepare_weight_out_in(w_oi)` does the same from HF's [Dout, Din] layout (e.g.
a tied embedding [V, D] used as the LM head), and `unprepare_weight` inverts
it. The panel layout holds the same numbers as `w` (same memory, no padding).

Why (measured on the 2-core AMD EPYC (Zen 4) CPU of this project, jax/jaxlib
0.10.2, float32, weights streamed from DRAM as in a real forward; see
`experiments/matmul_bench.py` and the README's performance section):

* `x @ w` with one row (M = 1) compiles to XLA's own dot thunk (an Eigen
  matrix-vector product) that streams the weights at memory speed. With
  2 <= M XLA:CPU hands the dot to YNNPACK (`__ynn_fusion`), whose matmul
  re-packs B (the whole weight matrix) on every call: for a matrix that
  comes from DRAM that is two extra passes over it, so 2..16 rows cost
  c(T) = 1.6-3x one row whatever T is.
* Written as a broadcast-multiply-reduce, YNNPACK runs the same contraction
  without packing: `sum(w[:, None] * x[None, :, :, None], axis=2)` for
  x [M, Din] and w as P-wide column panels [Dout/P, Din, P]
  (product [Dout/P, M, Din, P], reduced over Din). Each panel (Din * P * 4
  bytes, <= 1.1 MB for Din = 8960) is read from DRAM once, contiguously, and
  reused from cache for all M rows; P = 32 is two AVX-512 registers per row.
  Measured alternatives (all in the README): the same reduce on the [Dout,
  Din] layout (good for Din >= 1536, 2x worse for Din = 576 incl. SmolLM's
  LM head), on the [Din, Dout] layout (no better than `x @ w`), P = 16 / 64 /
  128 (worse), dot_general/einsum on any layout (YNNPACK packs again), Eigen
  via flags, XNNPACK and oneDNN flags, host BLAS callbacks (OpenBLAS, MKL
  via torch: 3-7x), T separate matvecs and `lax.map` over output blocks.
* M = 1 uses the reduce `sum(wp * x[None, :, None], axis=1)` on the same
  layout (the broadcast form with a unit row axis falls off YNNPACK's fast
  path: 50-100x slower); it is no slower than the Eigen matvec of `x @ w`.
* `lax.optimization_barrier` fences the input and output: without it XLA's
  algebraic simplifier merges a later reduction of y (e.g. a mean) into this
  one, or fuses the producer of x into the product, and then materializes the
  [M, Dout, Din]-sized product (it ran out of 24 GB in a test).

Cost is compute-bound once T/2 flop per weight byte exceeds the CPU's
flop/byte ratio (about T = 8-16 here), so c(T) grows for T >= 16 whatever the
formulation; for T <= 64 the reduce form is still faster than `x @ w`, and it
stays within ~1.2x of `x @ w` for prefill-sized M (128-512), where no layout
change pays for itself (transposing the panels back costs more than it
saves).

Non-CPU backends and non-float32 dtypes take a plain `einsum` over the same
layout (chosen at lowering time with `lax.platform_dependent`), so the
prepared weights work everywhere. Results equal `x @ w` up to float32
summation order (rtol ~1e-6).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Column-panel width: 32 float32 = two 512-bit registers per row. Measured
# best of 16/32/64/128 for every shape in experiments/matmul_bench.py.
PANEL = 32


def _panel_width(dout: int, panel: int) -> int:
    """The largest power of two <= `panel` dividing `dout` (1 for odd dout)."""
    p = panel
    while p > 1 and dout % p:
        p //= 2
    return p


def prepare_weight_out_in(w_oi, panel: int = PANEL):
    """[Dout, Din] (HF / torch layout) -> [Dout/P, Din, P] panels.

    Works on numpy (stays numpy, for loaders) and jax arrays. P is `panel`, or
    the largest power of two below it dividing Dout.
    """
    dout, din = w_oi.shape
    p = _panel_width(dout, panel)
    xp = np if isinstance(w_oi, np.ndarray) else jnp
    out = xp.transpose(xp.reshape(w_oi, (dout // p, p, din)), (0, 2, 1))
    return np.ascontiguousarray(out) if xp is np else out


def prepare_weight(w, panel: int = PANEL):
    """[Din, Dout] (the layout of `models.params`) -> [Dout/P, Din, P] panels.

    `linear(x, prepare_weight(w)) == x @ w` up to float rounding.
    """
    din, dout = w.shape
    p = _panel_width(dout, panel)
    xp = np if isinstance(w, np.ndarray) else jnp
    out = xp.transpose(xp.reshape(w, (din, dout // p, p)), (1, 0, 2))
    return np.ascontiguousarray(out) if xp is np else out


def unprepare_weight(wp):
    """[Dout/P, Din, P] panels -> [Din, Dout]."""
    j, din, p = wp.shape
    xp = np if isinstance(wp, np.ndarray) else jnp
    return xp.reshape(xp.transpose(wp, (1, 0, 2)), (din, j * p))


def _reduce_rows(x, wp):
    """x [M, Din], wp [J, Din, P] -> [M, J*P], 2 <= M. YNNPACK reduce, no packing."""
    m = x.shape[0]
    j, _, p = wp.shape
    # product [J, M, Din, P] (never materialized), sum over Din -> [J, M, P]
    y = jnp.sum(wp[:, None, :, :] * x[None, :, :, None], axis=2)
    return jnp.transpose(y, (1, 0, 2)).reshape(m, j * p)  # tiny transpose


def _reduce_one(x, wp):
    """x [1, Din] -> [1, J*P]: padded to two rows, which runs the same YNNPACK
    kernel as `_reduce_rows` (a 1-row product takes a slow path)."""
    return _reduce_rows(jnp.concatenate([x, x]), wp)[:1]


def _cpu(x, wp):
    x = lax.optimization_barrier(x)
    y = _reduce_one(x, wp) if x.shape[0] == 1 else _reduce_rows(x, wp)
    return lax.optimization_barrier(y)


def _generic(x, wp):
    j, _, p = wp.shape
    y = jnp.einsum("md,jdp->mjp", x, wp, preferred_element_type=jnp.float32)
    return y.reshape(x.shape[0], j * p).astype(jnp.result_type(x, wp))


def linear(x: jax.Array, wp: jax.Array) -> jax.Array:
    """y = x @ w for x [..., T, Din] and wp = prepare_weight(w) [Dout/P, Din, P].

    Returns [..., T, Dout] in the result dtype of (x, wp). Jittable, usable
    inside `lax.scan` / `lax.while_loop` / `vmap`; all leading axes of x are
    flattened into M rows (so batch B and T tokens give M = B*T).
    """
    if wp.ndim != 3:
        raise ValueError(
            f"linear expects prepare_weight(w) [Dout/P, Din, P], got shape {wp.shape}"
        )
    j, din, p = wp.shape
    if x.shape[-1] != din:
        raise ValueError(f"x [..., {x.shape[-1]}] does not match weight Din={din}")
    lead = x.shape[:-1]
    m = math.prod(lead)
    x2 = x.reshape(m, din)
    if m == 0:
        y = _generic(x2, wp)
    elif x2.dtype == jnp.float32 and wp.dtype == jnp.float32:
        y = lax.platform_dependent(x2, wp, cpu=_cpu, default=_generic)
    else:
        y = _generic(x2, wp)
    return y.reshape(*lead, j * p)

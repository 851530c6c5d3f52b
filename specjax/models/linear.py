"""The dense layer y = x @ w, shaped so that verifying a few tokens on CPU costs
about as much as decoding one.

LAYOUT CHANGE: `linear` does not take the [Din, Dout] matrix that
`models.params` stores. Convert every matrix once with `prepare_weight(w)`
(numpy or jax, at load time, outside jit) and pass the result:

    wp = prepare_weight(w)     # [Din, Dout] -> [Dout/P, Din, P], P = 32 or 64
    y = linear(x, wp)          # x [..., T, Din] float32 -> [..., T, Dout]

`prepare_weight_out_in(w_oi)` does the same from HF's [Dout, Din] layout (e.g.
a tied embedding [V, D] used as the LM head), and `unprepare_weight` inverts
it; `dense(x, w)` multiplies a weight in either layout. The panel layout holds the same numbers as `w` (same memory, no padding);
for a tied LM head it is a second copy of the embedding (the token lookup
still needs [V, D]): +113 MB for SmolLM2-135M, +933 MB for Qwen2.5-1.5B.

Why (measured on this project's 2-core AMD EPYC (Zen 4) VM, jax/jaxlib
0.10.2, float32, weights streamed from DRAM as in a real forward, load
average 4-6 from other jobs; `experiments/matmul_bench.py`, README
performance section). c(T) = time(T rows) / time(`x @ w`, 1 row):

* `x @ w` with one row (M = 1) compiles to XLA's own dot thunk (an Eigen
  matrix-vector product). With M >= 2 XLA:CPU hands the dot to YNNPACK
  (`__ynn_fusion` in the compiled HLO), and 2..8 rows cost c = 1.4-3.4 on
  every shape, nearly flat in T: YNNPACK's matmul packs B (the weight) per
  call (its `pack_b` step), an extra pass over a matrix that comes from DRAM.
* Written as a broadcast-multiply-reduce, YNNPACK runs the contraction
  without that pass:

      # x [M, Din], wp [Dout/P, Din, P]
      y = sum(wp[:, None, :, :] * x[None, :, :, None], axis=2)  # [Dout/P, M, P]

  The product [Dout/P, M, Din, P] is never materialized; each panel (Din*P*4
  bytes, 74 KB-1.1 MB) is read once, contiguously, and reused from cache for
  all M rows; P = 32 floats is two AVX-512 registers (64 for Din >= 1024,
  see `default_panel`). Measured c(T) over the ten SmolLM2-135M and
  Qwen2.5-1.5B matrices (load 3.1-4.2): T=1 0.62-0.95, T=2 0.61-0.93,
  T=4 0.62-1.43, T=8 0.97-1.66 (plain: 1, 1.47-2.69, 1.39-2.30, 1.61-2.99);
  the table is in the README.
* Tried and measured worse (numbers in the README): the same reduce on the
  [Dout, Din] layout (fine for Din >= 1536, ~2x worse than panels for
  Din = 576, e.g. SmolLM's LM head), on the [Din, Dout] layout (no better
  than `x @ w`), panels of 16 / 128 (and 64 for Din = 576), dot_general /
  einsum on the transposed layout (YNNPACK packs again), Eigen (YNNPACK off via flags or
  `compiler_options`), XNNPACK and oneDNN flags, host BLAS via
  `pure_callback` (OpenBLAS, 30-70x), torch/MKL itself (c(2) = 1.8-3.4),
  T separate matvecs, `lax.map` over output blocks, bfloat16.
* M = 1 pads x to two rows and runs the same kernel (a one-row product falls
  off YNNPACK's fast path: 14-60x slower; a 2-D `sum(wp * x[None, :, None], 1)`
  was 0.7-1.4x of `x @ w`, the padded form 0.5-0.75x in a T=1 run).
* `lax.optimization_barrier` fences the inputs (x and wp together) and the
  output: without it XLA can merge a later reduction of y (e.g. a mean) into
  this one, fuse x's producer into the product, or CSE the broadcast of a
  weight used twice with the same M, and then materializes an M x
  weight-sized array (one benchmark ran out of 24 GB).

Limits. Verifying T rows needs 2*T*Din*Dout flops for 4*Din*Dout bytes, so
once T/2 flop/byte exceeds the CPU's flop/byte ratio (T ~ 8-16 on 2 loaded
cores) the cost grows linearly whatever the formulation: c(16) = 1.4-2.3,
c(64) = 4.8-7.8 (plain: 2.0-4.2 and 5.3-9.1). For prefill-sized M (128-512)
the reduce form measured 0.75-1.7x the plain matmul depending on the shape;
`linear(x, wp, w_io)` falls back to `x @ w_io` above `PREFILL_ROWS` if the
caller keeps the [Din, Dout] weight too (transposing the panels back inside
the jit costs more than it saves).

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

# Column-panel width P: 32 float32 (two 512-bit registers per row) for
# Din < 1024, 64 from Din = 1024 on (measured best of 16/32/64/128 in
# experiments/matmul_bench.py: 64 was 0-25% faster for Qwen2.5-1.5B's
# Din = 1536 / 8960, 32 up to 2x faster for SmolLM2's Din = 576).
PANEL = 32
PANEL_WIDE = 64
WIDE_FROM_DIN = 1024


def default_panel(din: int) -> int:
    """The panel width `prepare_weight` uses for this Din."""
    return PANEL_WIDE if din >= WIDE_FROM_DIN else PANEL

# Above this many rows (prefill), `linear` uses `x @ w_io` when the caller also
# passes the [Din, Dout] weight: the reduce form measured 0.75-1.7x the plain
# matmul at M = 128-512 depending on the shape.
PREFILL_ROWS = 128


def panel_width(dout: int, panel: int) -> int:
    """The largest power of two <= `panel` dividing `dout` (1 for odd dout)."""
    p = panel
    while p > 1 and dout % p:
        p //= 2
    return p


def prepare_weight_out_in(w_oi, panel: int | None = None):
    """[Dout, Din] (HF / torch layout) -> [Dout/P, Din, P] panels.

    Works on numpy (stays numpy, for loaders) and jax arrays. P is `panel`
    (default `default_panel(Din)`), or the largest power of two below it
    dividing Dout.
    """
    dout, din = w_oi.shape
    p = panel_width(dout, panel or default_panel(din))
    xp = np if isinstance(w_oi, np.ndarray) else jnp
    out = xp.transpose(xp.reshape(w_oi, (dout // p, p, din)), (0, 2, 1))
    return np.ascontiguousarray(out) if xp is np else out


def prepare_weight(w, panel: int | None = None):
    """[Din, Dout] (the layout of `models.params`) -> [Dout/P, Din, P] panels.

    `linear(x, prepare_weight(w)) == x @ w` up to float rounding. P is `panel`
    (default `default_panel(Din)`: 32, or 64 for Din >= 1024), or the largest
    power of two below it dividing Dout.
    """
    din, dout = w.shape
    p = panel_width(dout, panel or default_panel(din))
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
    # One barrier over (x, wp): the weight each call sees is then its own
    # value, so XLA cannot CSE the broadcast of wp between two calls on the same
    # weight with the same M (it then materializes it, M x the weight's size).
    x, wp = lax.optimization_barrier((x, wp))
    y = _reduce_one(x, wp) if x.shape[0] == 1 else _reduce_rows(x, wp)
    return lax.optimization_barrier(y)


def _generic(x, wp):
    j, _, p = wp.shape
    y = jnp.einsum("md,jdp->mjp", x, wp, preferred_element_type=jnp.float32)
    return y.reshape(x.shape[0], j * p).astype(jnp.result_type(x, wp))


def linear(x: jax.Array, wp: jax.Array, w_io: jax.Array | None = None,
           *, prefill_rows: int = PREFILL_ROWS) -> jax.Array:
    """y = x @ w for x [..., T, Din] and wp = prepare_weight(w) [Dout/P, Din, P].

    Returns [..., T, Dout] in the result dtype of (x, wp). Jittable, usable
    inside `lax.scan` / `lax.while_loop` / `vmap`; all leading axes of x are
    flattened into M rows (so batch B and T tokens give M = B*T).

    w_io: optionally the same weight in the [Din, Dout] layout; then for
      M > prefill_rows (a static choice by shape) the plain `x @ w_io` runs
      instead. Only worth its memory if prefill time matters; without it every
      M uses the panel formulation.
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
    if w_io is not None and m > prefill_rows:
        if w_io.shape != (din, j * p):
            raise ValueError(f"w_io {w_io.shape} is not [Din, Dout] = {(din, j * p)}")
        return jnp.matmul(x, w_io)
    x2 = x.reshape(m, din)
    if m == 0:
        y = _generic(x2, wp)
    elif x2.dtype == jnp.float32 and wp.dtype == jnp.float32:
        y = lax.platform_dependent(x2, wp, cpu=_cpu, default=_generic)
    else:
        y = _generic(x2, wp)
    return y.reshape(*lead, j * p)


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., Din] @ w, for w either [Din, Dout] or panelled [Dout/P, Din, P]
    (`prepare_weight`, see `models.params.panelize`): how the decoder and the
    layout probe (`models.layout`) multiply every weight matrix."""
    return linear(x, w) if w.ndim == 3 else x @ w

"""c(T) of one dense layer y = x @ w: plain `x @ w` vs `specjax.models.linear`.

    python -m experiments.matmul_bench                       # all shapes, plain vs linear
    python -m experiments.matmul_bench --shapes=smol_gate_up,qwen_down --tokens=1,2,4,8
    python -m experiments.matmul_bench --variants=plain,linear,reduce_oi,plain_eigen
    python -m experiments.matmul_bench --list                # the formulations tried

c(T) = time(T rows) / time(plain `x @ w`, 1 row), both measured in the same
run. Weights are streamed from DRAM as in a real forward: each timed call runs
a chain of `copies` distinct weight matrices (at least `--stream_mb` MB in
all, at most `--max_copies` matrices, each layer's input depending on the
previous output so XLA cannot overlap them), and the time per matrix is
reported. `--stream_mb=0` times one matrix that stays in cache instead (not
what a forward sees for these models: SmolLM2-135M is 540 MB).

Timing: a warm-up call per (variant, T), then `--reps` rounds that each time
every (variant, T) once, interleaved, and the median per (variant, T). The
machine is shared: compare ratios within one run, and read the load average
printed next to each shape.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from specjax.models import linear as lin
from specjax.models.layout import chain, time_interleaved

SHAPES = {  # name: (Din, Dout)
    "smol_q_o": (576, 576),
    "smol_kv": (576, 192),
    "smol_gate_up": (576, 1536),
    "smol_down": (1536, 576),
    "smol_head": (576, 49152),
    "qwen_q_o": (1536, 1536),
    "qwen_kv": (1536, 256),
    "qwen_gate_up": (1536, 8960),
    "qwen_down": (8960, 1536),
    "qwen_head": (1536, 151936),
}

_SHAPES = flags.DEFINE_list("shapes", list(SHAPES), "Names from SHAPES or DinxDout.")
_TOKENS = flags.DEFINE_list("tokens", ["1", "2", "4", "8", "16", "32", "64"],
                            "Values of T (rows of x).")
_VARIANTS = flags.DEFINE_list("variants", ["plain", "linear"],
                              "Formulations, the first is the reference; see --list.")
_REPS = flags.DEFINE_integer("reps", 10, "Interleaved timed rounds (max).")
_BUDGET_S = flags.DEFINE_float("budget_s", 25,
                               "Fewer rounds (>= 3) for a shape whose rounds would take longer.")
_STREAM_MB = flags.DEFINE_float("stream_mb", 128,
                                "Weight bytes per timed call (0: one cache-resident matrix).")
_MAX_COPIES = flags.DEFINE_integer("max_copies", 64, "Cap on weight copies.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")
_LIST = flags.DEFINE_bool("list", False, "List the variants and exit.")


def _fence(f):
    """Barriers around a formulation, as `linear` has, so XLA cannot merge its
    reduction with the chain's mean or fuse the chain's add into it."""

    def g(x, w):
        return lax.optimization_barrier(f(lax.optimization_barrier(x), w))

    return g


def _matvecs(x, w):
    return jnp.stack([x[t] @ w for t in range(x.shape[0])])


def _map_blocks(x, w, block=1024):
    din, dout = w.shape
    if dout % block:
        return x @ w
    wb = jnp.transpose(w.reshape(din, dout // block, block), (1, 0, 2))  # copy
    return jnp.transpose(lax.map(lambda wj: x @ wj, wb), (1, 0, 2)).reshape(x.shape[0], dout)


def _numpy_callback(x, w):
    def host(xh, wh):
        return np.asarray(xh) @ np.asarray(wh)

    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32)
    return jax.pure_callback(host, out, x, w)


# name: (weight layout, fn(x [M, Din], prepared w) -> [M, Dout], compiler options, doc)
def _variants():
    no_ynn = {"xla_cpu_experimental_ynn_fusion_type": ""}
    v = {
        "plain": ("io", lambda x, w: x @ w, None, "x @ w, w [Din, Dout] (the baseline)"),
        "linear": ("panel", lin.linear, None,
                   "specjax.models.linear, prepare_weight's default panels (32; 64 if Din>=1024)"),
        "plain_eigen": ("io", lambda x, w: x @ w, no_ynn,
                        "x @ w with YNNPACK off for this jit (Eigen matmul)"),
        "reduce_oi": ("oi", _fence(lambda x, w: jnp.sum(w[None] * x[:, None, :], -1)), None,
                      "sum(w[None] * x[:, None, :], -1), w [Dout, Din]"),
        "reduce_io": ("io", _fence(lambda x, w: jnp.sum(w[None] * x[:, :, None], 1)), None,
                      "sum(w[None] * x[:, :, None], 1), w [Din, Dout]"),
        "dot_oi": ("oi", lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ()))), None,
                   "dot_general contracting the last dims, w [Dout, Din]"),
        "matvecs": ("io", _matvecs, None, "T separate x[t] @ w"),
        "map_blocks": ("io", _map_blocks, None, "lax.map over 1024-column blocks of w"),
        "numpy_cb": ("io", _numpy_callback, None, "jax.pure_callback to numpy (OpenBLAS)"),
        "bf16": ("io_bf16", lambda x, w: jnp.matmul(x.astype(jnp.bfloat16), w,
                                                    preferred_element_type=jnp.float32),
                 None, "bfloat16 weights and x, float32 accumulation (not exact)"),
    }
    for p in (16, 32, 64, 128):
        v[f"linear_p{p}"] = (f"panel{p}", lin.linear, None, f"linear with panels of {p}")
    return v


VARIANTS = _variants()


def _prepare(layout: str, w: np.ndarray):
    if layout == "io":
        return jnp.asarray(w)
    if layout == "io_bf16":
        return jnp.asarray(w, jnp.bfloat16)
    if layout == "oi":
        return jnp.asarray(np.ascontiguousarray(w.T))
    if layout == "panel":
        return jnp.asarray(lin.prepare_weight(w))
    if layout.startswith("panel"):
        return jnp.asarray(lin.prepare_weight(w, panel=int(layout[5:])))
    raise ValueError(layout)


def bench_shape(name, din, dout, tokens, variants, stream_mb, max_copies, reps, budget_s):
    """Times every variant at every T for one [din, dout] weight (see the module
    docstring); checks the variants agree with the first one."""
    nbytes = din * dout * 4
    copies = 1 if stream_mb <= 0 else int(
        min(max_copies, max(1, math.ceil(stream_mb * 2**20 / nbytes))))
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((din, dout), np.float32) / np.sqrt(din) for _ in range(copies)]
    prepared = {}
    for v in variants:
        layout = VARIANTS[v][0]
        if layout not in prepared:
            prepared[layout] = [_prepare(layout, w) for w in ws]
    del ws
    fns = {v: chain(VARIANTS[v][1], dout, VARIANTS[v][2]) for v in variants}
    xs = {t: jnp.asarray(rng.standard_normal((t, din), np.float32)) for t in tokens}
    # correctness against the first variant (float rounding only, bf16 excepted)
    for t in tokens:
        ref = np.asarray(fns[variants[0]](xs[t], prepared[VARIANTS[variants[0]][0]]))
        for v in variants[1:]:
            got = np.asarray(fns[v](xs[t], prepared[VARIANTS[v][0]]))
            tol = 3e-2 if "bf16" in v else 1e-4
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max(),
                                       err_msg=f"{name} {v} T={t}")
    load0 = os.getloadavg()[0]
    calls = {(v, t): functools.partial(fns[v], xs[t], prepared[VARIANTS[v][0]])
             for v in variants for t in tokens}
    med, reps = time_interleaved(calls, reps, budget_s)
    load1 = os.getloadavg()[0]
    ms = {k: 1e3 * s / copies for k, s in med.items()}
    return {"name": name, "din": din, "dout": dout, "copies": copies,
            "mb": copies * nbytes / 2**20, "load": (load0, load1), "reps": reps,
            "ms": {f"{v}@{t}": ms[(v, t)] for v, t in ms}}


def _markdown(res, tokens, variants):
    base_v = "plain" if "plain" in variants else variants[0]
    base = res["ms"][f"{base_v}@{tokens[0]}"]
    title = (f"### {res['name']} {res['din']}x{res['dout']} ({res['copies']} copies, "
             f"{res['mb']:.0f} MB per call, {res['reps']} rounds; "
             f"load {res['load'][0]:.1f} -> {res['load'][1]:.1f})")
    lines = [title,
             "",
             "| T | " + " | ".join(f"{v} ms" for v in variants) + " | "
             + " | ".join(f"c {v}" for v in variants) + " |",
             "|---" * (1 + 2 * len(variants)) + "|"]
    for t in tokens:
        row = [res["ms"][f"{v}@{t}"] for v in variants]
        lines.append(f"| {t} | " + " | ".join(f"{m:.3f}" for m in row) + " | "
                     + " | ".join(f"{m / base:.2f}" for m in row) + " |")
    return "\n".join(lines)


def _summary(results, tokens, variants):
    """One row per shape: c(T) of every variant (vs plain at T=1)."""
    base_v = "plain" if "plain" in variants else variants[0]
    head = "| shape | variant | " + " | ".join(f"T={t}" for t in tokens) + " | load |"
    lines = [head, "|---" * (3 + len(tokens)) + "|"]
    for r in results:
        base = r["ms"][f"{base_v}@{tokens[0]}"]
        for v in variants:
            cs = " | ".join(f"{r['ms'][f'{v}@{t}'] / base:.2f}" for t in tokens)
            lines.append(f"| {r['name']} {r['din']}x{r['dout']} | {v} | {cs} | "
                         f"{r['load'][0]:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if _LIST.value:
        for k, (layout, _, opts, doc) in VARIANTS.items():
            print(f"{k:12s} layout={layout:8s} {doc}")
        return
    tokens = [int(t) for t in _TOKENS.value]
    variants = _VARIANTS.value
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; --list shows them")
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()[0]:.1f}; "
          f"ms per matrix, c(T) vs {variants[0]} at T={tokens[0]}\n", flush=True)
    results = []
    for s in _SHAPES.value:
        din, dout = SHAPES[s] if s in SHAPES else map(int, s.split("x"))
        r = bench_shape(s, din, dout, tokens, variants, stream_mb=_STREAM_MB.value,
                        max_copies=_MAX_COPIES.value, reps=_REPS.value, budget_s=_BUDGET_S.value)
        results.append(r)
        print(_markdown(r, tokens, variants) + "\n", flush=True)
    print("## c(T) summary\n")
    print(_summary(results, tokens, variants))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"tokens": tokens, "variants": variants, "results": results}, f, indent=1)


if __name__ == "__main__":
    app.run(main)

"""The CPU weight layout: plain or panels, chosen per machine (`layout="auto"`).

A model's matrices run either plain ([Din, Dout], `x @ w`) or in the panel
layout of `models.linear` (`models.params.panelize`), and may mix them: plain
layer matrices with the LM head in both layouts, the panelled head serving the
forwards whose row count M (batch x tokens) lies in `ModelConfig.panel_head_rows`.
A `LayoutPlan` names such a choice; `resolve` turns a layout name ("plain",
"panels", "auto") into one, and `models.params.convert` / `with_layout` /
`place` put the weights in it.

Which formulation of a dense layer is faster on XLA:CPU depends on the CPU,
not only on the shapes: the panel layout made SmolLM2-135M decode 1.9x faster
than plain `x @ w` on the project's machine in session 2, and 1.6x slower on
the machines of sessions 5 and 6 (README, performance section). So `auto`
measures instead of assuming.

`measure(cfg)` times, with the weights streamed from DRAM as in a forward,

- the seven matrices of a layer (wq, wk, wv, wo, gate, up, down) multiplied
  in sequence through `linear.dense` (as the decoder runs them), over as
  many random layers of `cfg`'s shapes as stream `STREAM_MB` from DRAM, per
  layer, and
- the LM head ([D, V]; `x @ embed.T` for tied embeddings, as the decoder
  runs it),

each as plain `x @ w` and as `linear(x, prepare_weight(w))`, at M rows for
M in `ROWS`. `decide` turns the times into a `LayoutPlan`:

- body: "panels" if the layer matrices' time summed over `BODY_ROWS` (one
  token for autoregressive steps and drafts, 2-8 for verification) is lower
  in panels, else "plain";
- head: the contiguous range of M where the panelled LM head is at least
  `HEAD_MARGIN` faster than the plain one (None if it never is). The decoder
  keeps both heads and picks one by the static row count
  (`decoder.logits_from_hidden`, `ModelConfig.panel_head_rows`).

Results are cached per (CPU, JAX version, shapes) in
`<specjax cache>/layout/`, so a model is probed once per machine (10-40 s);
`python -m experiments.layout_probe MODEL [--force]` prints a probe's table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import assets, linear
from specjax.models.config import ModelConfig
from specjax.models.linear import dense

ROWS = (1, 2, 4, 8, 16, 32)  # M values measured
BODY_ROWS = (1, 2, 4, 8)  # M values whose summed time chooses the body layout
HEAD_MARGIN = 0.05  # the panelled head must be this much faster to be used
STREAM_MB = 64  # weight bytes per timed call (more than a CPU's last-level cache)
MAX_LAYERS = 16
VERSION = 1  # bump when the measurement or the decision changes


@dataclasses.dataclass(frozen=True)
class LayoutPlan:
    """Where panels are used: `body` ("plain"/"panels") for the layer matrices;
    `head` = (lo, hi) inclusive row counts M that use the panelled LM head, or
    None for no panelled head."""

    body: str
    head: tuple[int, int] | None

    def __post_init__(self):
        if self.body not in ("plain", "panels"):
            raise ValueError(f"body layout must be 'plain' or 'panels', got {self.body!r}")
        if self.head is not None and not 1 <= self.head[0] <= self.head[1]:
            raise ValueError(f"head rows must be 1 <= lo <= hi, got {self.head}")



LAYOUTS = ("auto", "plain", "panels")
ALL_ROWS = (1, 2**31 - 1)  # ModelConfig.panel_head_rows: the panelled head at every M
PLAIN = LayoutPlan(body="plain", head=None)
PANELS = LayoutPlan(body="panels", head=ALL_ROWS)


def resolve(cfg: ModelConfig, layout: str | LayoutPlan) -> LayoutPlan:
    """The `LayoutPlan` of a `LAYOUTS` name: "plain", "panels" (panelled layer
    matrices and LM head), or "auto": on the CPU backend, what `probe`
    measures faster on this machine for these shapes (cached per machine);
    plain on accelerators."""
    if isinstance(layout, LayoutPlan):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; valid: {LAYOUTS}")
    if layout == "auto":
        if jax.default_backend() != "cpu" or jnp.dtype(cfg.dtype) != jnp.float32:
            return PLAIN
        return probe(cfg)
    return PANELS if layout == "panels" else PLAIN


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """[Din, Dout] of each per-layer matrix."""
    d, q, kv, f = cfg.dim, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.ffn_dim
    return {"wq": (d, q), "wk": (d, kv), "wv": (d, kv), "wo": (q, d),
            "w_gate": (d, f), "w_up": (d, f), "w_down": (f, d)}


def chain(fn: Callable, dout: int, options: dict | None = None):
    """One jitted call applying fn(x, w) to every weight copy in sequence, each
    input depending on the previous output so XLA cannot overlap the copies."""

    def run(x, ws):
        acc = jnp.zeros((x.shape[0], dout), jnp.float32)
        for w in ws:
            y = fn(x, w).astype(jnp.float32)
            acc = acc + y
            x = x + 1e-3 * jnp.mean(y, axis=-1, keepdims=True)  # serialises the chain
        return acc

    return jax.jit(run, compiler_options=options) if options else jax.jit(run)


def time_interleaved(calls: dict, reps: int, budget_s: float) -> tuple[dict, int]:
    """Median seconds per call of each zero-argument jitted call, the calls
    interleaved round by round; `reps` rounds, fewer (>= 3) if over budget_s."""
    for f in calls.values():  # compile + warm up
        jax.block_until_ready(f())
    times = {k: [] for k in calls}
    t0 = time.perf_counter()
    for f in calls.values():
        jax.block_until_ready(f())
    round_s = time.perf_counter() - t0
    reps = max(3, min(reps, int(budget_s / max(round_s, 1e-9))))
    for _ in range(reps):
        for k, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, reps


def _time_rows(fns: dict, args: dict, din: int, rows, reps: int, budget_s: float,
               per: int = 1) -> dict[str, dict[int, float]]:
    """ms of fns[v](x, args[v]) / per for x [M, din], at each M in rows, the
    variants v interleaved."""
    rng = np.random.default_rng(1)
    xs = {m: jnp.asarray(rng.standard_normal((m, din), np.float32)) for m in rows}
    calls = {(v, m): (lambda v=v, m=m: fns[v](xs[m], args[v])) for v in fns for m in rows}
    med, _ = time_interleaved(calls, reps, budget_s)
    return {v: {m: 1e3 * med[(v, m)] / per for m in rows} for v in fns}


def _layer_stack(x, layers):
    """The dense layers of a decoder block (no attention, no norms), layer after
    layer: every matrix of every layer multiplies once, each through
    `linear.dense` as the model runs it."""
    for lp in layers:
        q, k, v = dense(x, lp["wq"]), dense(x, lp["wk"]), dense(x, lp["wv"])
        x = x + 1e-3 * (dense(q, lp["wo"]) + jnp.mean(k + v, axis=-1, keepdims=True))
        x = x + 1e-3 * dense(jax.nn.silu(dense(x, lp["w_gate"])) * dense(x, lp["w_up"]),
                             lp["w_down"])
    return x


def time_layers(cfg: ModelConfig, rows, reps: int = 15, budget_s: float = 15.0):
    """ms per layer of the layer matrices, plain vs panels, at each M; enough
    layers (random weights of cfg's shapes) to stream `STREAM_MB` from DRAM."""
    shapes = layer_shapes(cfg)
    layer_bytes = 4 * sum(a * b for a, b in shapes.values())
    n = int(min(MAX_LAYERS, max(1, math.ceil(STREAM_MB * 2**20 / layer_bytes))))
    rng = np.random.default_rng(0)
    plain = [{k: rng.standard_normal(s, np.float32) / np.sqrt(s[0]) for k, s in shapes.items()}
             for _ in range(n)]
    args = {"plain": [{k: jnp.asarray(w) for k, w in lp.items()} for lp in plain],
            "panels": [{k: jnp.asarray(linear.prepare_weight(w)) for k, w in lp.items()}
                       for lp in plain]}
    del plain
    fn = jax.jit(_layer_stack)
    return _time_rows({"plain": fn, "panels": fn}, args, cfg.dim, rows, reps, budget_s, per=n)


def time_head(cfg: ModelConfig, rows, reps: int = 15, budget_s: float = 15.0):
    """ms of the LM head [D, V], plain vs panels, at each M, as the decoder runs
    it (`x @ embed.T` when tied)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cfg.vocab_size, cfg.dim), np.float32) / np.sqrt(cfg.dim)
    if cfg.tie_embeddings:
        args = {"plain": jnp.asarray(w), "panels": jnp.asarray(linear.prepare_weight_out_in(w))}
        plain = jax.jit(lambda x, e: jnp.matmul(x, e.T))
    else:
        w = np.ascontiguousarray(w.T)
        args = {"plain": jnp.asarray(w), "panels": jnp.asarray(linear.prepare_weight(w))}
        plain = jax.jit(jnp.matmul)
    del w
    return _time_rows({"plain": plain, "panels": jax.jit(dense)}, args, cfg.dim, rows, reps,
                      budget_s)


def measure(cfg: ModelConfig, rows=ROWS, reps: int = 15, budget_s: float = 15.0) -> dict:
    """ms per layer of the layer matrices and ms of the LM head, plain and
    panels, at each M in `rows`."""
    if jnp.dtype(cfg.dtype) != jnp.float32:
        raise ValueError(f"the layout probe measures float32 weights, cfg.dtype={cfg.dtype}")
    return {"rows": list(rows), "layer_ms": time_layers(cfg, rows, reps, budget_s),
            "head_ms": time_head(cfg, rows, reps, budget_s)}


def decide(times: dict, body_rows=BODY_ROWS, margin: float = HEAD_MARGIN) -> LayoutPlan:
    """The plan for measured `times` (see the module docstring)."""
    rows = times["rows"]
    b = times["layer_ms"]
    plain = sum(b["plain"][m] for m in body_rows)
    panels = sum(b["panels"][m] for m in body_rows)
    h = times["head_ms"]
    wins = [m for m in rows if h["panels"][m] < (1 - margin) * h["plain"][m]]
    head = (min(wins), max(wins)) if wins else None
    return LayoutPlan(body="panels" if panels < plain else "plain", head=head)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(cfg: ModelConfig) -> str:
    """Names one probe: this CPU, core count, JAX version, XLA flags and cfg's shapes."""
    what = {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "v": VERSION,
            "shapes": layer_shapes(cfg), "head": (cfg.dim, cfg.vocab_size),
            "tied": cfg.tie_embeddings, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_path(cfg: ModelConfig, cache: str | Path | None = None) -> Path:
    """Where the probe of `cfg` on this machine is cached."""
    return Path(cache or assets.cache_dir()) / "layout" / f"{cache_key(cfg)}.json"


def read_times(path: Path) -> dict:
    """The times `measure` returned, from a probe file (JSON keys are strings)."""
    rec = json.loads(Path(path).read_text())
    return {"rows": rec["rows"],
            **{k: {v: {int(m): t for m, t in d.items()} for v, d in rec[k].items()}
               for k in ("layer_ms", "head_ms")}}


def probe_times(cfg: ModelConfig, cache: str | Path | None = None, verbose: bool = True,
                force: bool = False) -> dict:
    """`measure(cfg)` on this machine, read from `<cache>/layout/` if this CPU,
    JAX version and these shapes were probed before (`force`: measure again).
    Measure on an otherwise idle machine: another process on the 2 cores skews
    the comparison."""
    path = probe_path(cfg, cache)
    if path.exists() and not force:
        return read_times(path)
    if verbose:
        print(f"[layout] probing plain vs panel weights for D={cfg.dim} V={cfg.vocab_size} "
              f"on this CPU (once; cached in {path.parent})", flush=True)
    times = measure(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(times, cpu=cpu_name(), jax=jax.__version__), indent=1))
    tmp.replace(path)
    return times


def probe(cfg: ModelConfig, cache: str | Path | None = None, verbose: bool = True,
          force: bool = False) -> LayoutPlan:
    """The measured plan for `cfg` on this machine (`decide(probe_times(...))`)."""
    plan = decide(probe_times(cfg, cache, verbose, force))
    if verbose:
        print(f"[layout] auto -> body {plan.body}, panelled LM head for rows {plan.head}",
              flush=True)
    return plan


def table(times: dict) -> str:
    """Markdown: ms per layer (layer matrices) and of the LM head, both layouts, per M."""
    rows = times["rows"]
    out = ["| part | layout | " + " | ".join(f"M={m}" for m in rows) + " |",
           "|---|---" + "|---" * len(rows) + "|"]
    for part, name in (("layer_ms", "layer matrices, ms/layer"), ("head_ms", "LM head, ms")):
        for v in ("plain", "panels"):
            out.append(f"| {name} | {v} | "
                       + " | ".join(f"{times[part][v][m]:.2f}" for m in rows) + " |")
    return "\n".join(out)

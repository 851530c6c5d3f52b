"""Multi-draft verifiers vs the optimum on real next-token distributions.

Reproduces the comparison of Hu et al. ("Towards Optimal Multi-draft
Speculative Decoding", arXiv:2502.18779, Sec. 6) with a real draft / target
pair: at every position of a text, the target's and the draft's processed
next-token distributions p and q (`sampling.process_probs` at a temperature)
go through `theory.compare_verifiers`, which returns the exact one-step
acceptance rate of RRS with and without replacement (SpecTr arXiv:2310.15141;
Jeon et al. arXiv:2402.14160), K-SEQ (SpecTr), greedy drafts (Hu et al.) and
the optimum of each draft law. The rates are averaged over positions.

Texts: each prompt followed by the target's greedy continuation
(`decode.autoregressive_generate`), so the contexts are ones the target itself
produces. The positions are the predictions of that continuation (the last
prompt token's, then each continuation token's but the last). One causal
forward of each model over the whole text (an empty one-slot cache) gives the
hidden states; only the chosen rows go through the LM head. The models are
used one after the other, so only one is in memory at a time.

Standard errors treat the prompts as independent clusters (the positions of
one text are correlated): for the pooled mean m of N rows in G prompts,
se = sqrt(G / (G - 1) * sum_g (sum_{i in g} (x_i - m))^2) / N. A verifier
and its optimum are evaluated on the same rows, so the standard error of the
gap is that of the paired per-row differences (much smaller than either
mean's).

Support truncation (`Settings.min_prob > 0`) makes the 152k-token
computations affordable: per row only the tokens with p or q >= min_prob
(plus the top max(n) tokens of q) are kept and both laws renormalised. The
dropped masses are recorded, and `Settings.validate_rows` rows per
temperature are recomputed on the full vocabulary to report the actual
error. With min_prob = 0 every rate is exact, except RRS without replacement
for n >= 3, which `theory.compare_verifiers` returns as certified bounds
(the table shows their midpoint and the width of the bounds on the mean).

Layout: `greedy_continuations` and `continuation_logits` (models -> logits),
`distributions`, `compare_prompt` (p, q -> per-row rates), `summarize`
(rows -> means, standard errors, gaps, consistency counts), `run` (all of it
for token-id prompts; optionally caches the continuations and logits in an
.npz so that a re-analysis skips the models), `markdown_table`, `plot`,
`write_outputs`; and for the
config-driven experiment (`experiments/theory_optimal.py`):
`ExperimentConfig`, `from_config_dict`, `select_prompts`, `run_experiment`.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax import decode, theory
from specjax.bench.experiment import PromptConfig
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.sampling import Sampling, process_probs
from specjax.theory.comparison import DRAFT_LAW_OF

# Verifier columns and optima (display order) and their display names.
VERIFIERS = ("rrs_with_replacement", "kseq", "rrs_without_replacement", "greedy")
OPTIMA = ("optimal_iid", "optimal_without_replacement")
NAMES = {
    "single": "single draft (1 - TV)",
    "rrs_with_replacement": "RRS, with replacement",
    "kseq": "K-SEQ (rho*)",
    "rrs_without_replacement": "RRS, without replacement",
    "greedy": "greedy drafts (= their optimum)",
    "optimal_iid": "optimum, i.i.d. drafts",
    "optimal_without_replacement": "optimum, without replacement",
}
# Per-row [M, K] columns kept from `theory.compare_verifiers`.
COLUMNS = VERIFIERS + OPTIMA + (
    "optimal_greedy", "rrs_without_replacement_lower", "rrs_without_replacement_upper", "kseq_rho")
# The optimum a verifier must not exceed (row-wise check in `summarize`).
_BOUND_OF = {
    "rrs_with_replacement": "optimal_iid",
    "kseq": "optimal_iid",
    "rrs_without_replacement_lower": "optimal_without_replacement",
}
_TOL = 1e-9

ModelPair = tuple[ModelConfig, Any]  # (config, params)


@dataclasses.dataclass(frozen=True)
class TextItem:
    """One prompt as token ids, with its origin (rows are grouped by `source`)."""

    source: str
    name: str
    category: str
    ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure (the model-independent part of the experiment).

    Attributes:
      temperatures: temperatures > 0 of `sampling.process_probs` (same for p and q).
      num_drafts: the draft counts n (each >= 2; n = 1 is the "single" column).
      num_positions: positions per prompt (= greedy continuation length; fewer
        if the continuation ends with an EOS token).
      min_prob: support truncation threshold (0 = the full vocabulary).
      validate_rows: rows per temperature recomputed on the full vocabulary
        when min_prob > 0.
      max_histories: budget of the RRS-without-replacement bounds for n >= 3.
      generate_batch: prompts per greedy-continuation batch (sorted by length).
      length_bucket: texts are padded to a multiple of this for the scoring
        forward (fewer compilations).
    """

    temperatures: tuple[float, ...] = (0.7, 1.0)
    num_drafts: tuple[int, ...] = (2, 3, 4)
    num_positions: int = 40
    min_prob: float = 0.0
    validate_rows: int = 0
    max_histories: int = 64
    generate_batch: int = 4
    length_bucket: int = 64

    def __post_init__(self):
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be > 0 (greedy decoding has no multi-draft law), "
                             f"got {self.temperatures}")
        if not self.num_drafts or min(self.num_drafts) < 2:
            raise ValueError(f"num_drafts must be >= 2, got {self.num_drafts}")
        if self.num_positions < 1:
            raise ValueError(f"num_positions must be >= 1, got {self.num_positions}")
        if not 0.0 <= self.min_prob < 1e-2:
            raise ValueError(f"min_prob must be in [0, 1e-2), got {self.min_prob}")
        if self.max_histories < 1 or self.generate_batch < 1 or self.length_bucket < 1:
            raise ValueError("max_histories, generate_batch and length_bucket must be >= 1")


# --------------------------------------------------------------------------
# Models -> logits
# --------------------------------------------------------------------------


def greedy_continuations(target: ModelPair, prompts: Sequence[Sequence[int]], num_tokens: int,
                         eos_ids: Sequence[int] = (), batch_size: int = 4) -> list[list[int]]:
    """The target's greedy continuation of each prompt (ends after an EOS token if one comes).

    Prompts are sorted by length and generated `batch_size` at a time, so rows
    of similar length share a padded batch.
    """
    cfg, params = target
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        gen = decode.autoregressive_generate(params, cfg, [list(prompts[i]) for i in idx],
                                             max_new_tokens=num_tokens, eos_ids=eos_ids)
        for i, toks in zip(idx, gen.tokens):
            out[i] = toks
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "count"))
def _position_logits(params, tokens, start, *, cfg: ModelConfig, count: int):
    """Logits at rows [start, start + count) of one text: float32[count, V].

    tokens: int32[1, T], padded at the end (real rows never attend to padding).
    """
    T = tokens.shape[1]
    cache = kvcache.init_cache(cfg, 1, 1)  # one invisible slot: the text is the whole context
    mask = decoder.attention_mask(cache.length, cache.max_len, decoder.causal_mask(1, T))
    positions = jnp.arange(T)[None]
    h, _, _ = decoder.transformer(params, cfg, tokens, positions, cache, mask)  # [1, T, D]
    rows = jax.lax.dynamic_slice_in_dim(h[0], start, count, axis=0)  # [count, D]
    return decoder.logits_from_hidden(params, cfg, rows)  # [count, V]


def position_logits(model: ModelPair, text: Sequence[int], start: int, count: int,
                    bucket: int = 64) -> np.ndarray:
    """float32[count, V]: row j holds the logits of token start+1+j given text[:start+1+j].

    One causal forward over the whole text (padded to a multiple of `bucket`
    so that texts of similar length share a compilation); only the `count`
    chosen rows go through the LM head.
    """
    cfg, params = model
    if start < 0 or count < 1 or start + count > len(text):
        raise ValueError(f"rows [{start}, {start + count}) outside a text of {len(text)} tokens")
    T = -(-len(text) // bucket) * bucket
    tokens = np.zeros((1, T), np.int32)
    tokens[0, :len(text)] = text
    return np.asarray(_position_logits(params, jnp.asarray(tokens), jnp.int32(start), cfg=cfg,
                                       count=count))


def continuation_logits(model: ModelPair, prompt_ids: Sequence[int], continuation: Sequence[int],
                        bucket: int = 64) -> np.ndarray:
    """float32[M, V] logits at the M = len(continuation) positions of prompt ++ continuation.

    Row j predicts continuation[j] from prompt ++ continuation[:j].
    """
    text = list(prompt_ids) + list(continuation)
    return position_logits(model, text, len(prompt_ids) - 1, len(continuation), bucket)


def distributions(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float64[M, V] processed laws (`sampling.process_probs`) of float32 logits [M, V]."""
    probs = process_probs(jnp.asarray(logits), Sampling(temperature=float(temperature)))
    return np.asarray(probs, np.float64)


def load_model(name_or_path: str, dtype: str = "float32") -> ModelPair:
    """`loading.load`, placed on the device leaf by leaf (no second full copy in memory)."""
    from specjax.models import loading

    cfg, params = loading.load(name_or_path, dtype, progress=False)
    return cfg, _device_put_inplace(params)


def _device_put_inplace(tree):
    if isinstance(tree, dict):
        for k in list(tree):
            tree[k] = _device_put_inplace(tree[k])
        return tree
    if isinstance(tree, list):
        for i in range(len(tree)):
            tree[i] = _device_put_inplace(tree[i])
        return tree
    return jax.device_put(tree)


# --------------------------------------------------------------------------
# Distributions -> per-row rates
# --------------------------------------------------------------------------


def truncate_support(p: np.ndarray, q: np.ndarray, min_prob: float, keep_top: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Keeps the tokens with p or q >= min_prob (and the top `keep_top` of q), renormalised.

    Returns:
      (p', q', dropped mass of p, dropped mass of q); p', q' float64 [V'].
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    keep = (p >= min_prob) | (q >= min_prob)
    if keep_top:
        keep[np.argsort(-q, kind="stable")[:keep_top]] = True
    p_total, q_total = p.sum(), q.sum()
    dp, dq = float(p[~keep].sum() / p_total), float(q[~keep].sum() / q_total)
    p, q = p[keep], q[keep]
    return p / p.sum(), q / q.sum(), dp, dq


def compare_prompt(p: np.ndarray, q: np.ndarray, settings: Settings) -> dict[str, np.ndarray]:
    """Per-row rates of every verifier and optimum, for one prompt at one temperature.

    Args:
      p, q: target / draft laws [M, V].
      settings: draft counts, truncation and history budget.

    Returns:
      dict: COLUMNS -> float64 [M, K], "single" [M], and the truncation
      record "dropped_p", "dropped_q", "support" [M] (0, 0, V when exact).
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    ns = tuple(int(n) for n in settings.num_drafts)
    M, V = p.shape
    if settings.min_prob == 0.0:
        table = theory.compare_verifiers(p, q, ns, max_histories=settings.max_histories)
        out = {k: table[k] for k in COLUMNS + ("single",)}
        out.update(dropped_p=np.zeros(M), dropped_q=np.zeros(M), support=np.full(M, float(V)))
        return out
    rows = []
    for m in range(M):
        pm, qm, dp, dq = truncate_support(p[m], q[m], settings.min_prob, keep_top=max(ns))
        support = pm.shape[0]
        pad = min(_bucket(support), V) - support
        if pad > 0:  # zero tokens are never drafted nor output; padding only limits recompiling
            pm, qm = np.pad(pm, (0, pad)), np.pad(qm, (0, pad))
        t = theory.compare_verifiers(pm[None], qm[None], ns, max_histories=settings.max_histories)
        t = {k: t[k][0] for k in COLUMNS + ("single",)}
        t.update(dropped_p=dp, dropped_q=dq, support=float(support))
        rows.append(t)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _bucket(v: int) -> int:
    """Size a truncated support is zero-padded to.

    From 2048 tokens on, `theory` runs the race integral as a jitted scan that
    compiles per vocabulary size; sizes 2^(k/4) keep the number of shapes small.
    """
    if v < 2048:
        return v
    return math.ceil(2.0 ** (math.ceil(4 * math.log2(v)) / 4))


# --------------------------------------------------------------------------
# Rows -> summary
# --------------------------------------------------------------------------


def cluster_mean_se(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean over rows and its cluster-robust standard error (clusters = groups).

    Args:
      x: [N, ...] values.
      groups: int[N] cluster ids.

    Returns:
      (mean [...], se [...]); se is NaN with fewer than two clusters.
    """
    x = np.asarray(x, np.float64)
    groups = np.asarray(groups)
    N = x.shape[0]
    mean = x.mean(axis=0)
    ids = np.unique(groups)
    if len(ids) < 2:
        return mean, np.full_like(mean, np.nan)
    sums = np.stack([(x[groups == g] - mean).sum(axis=0) for g in ids])
    se = np.sqrt(len(ids) / (len(ids) - 1) * (sums ** 2).sum(axis=0)) / N
    return mean, se


def summarize(rows: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, Any]:
    """Means, standard errors, gaps and consistency counts over the rows of one temperature.

    Args:
      rows: per-row columns (from `compare_prompt`, concatenated over prompts).
      groups: int[N] prompt index of each row (the clusters of the standard error).

    Returns:
      dict with
      - "mean", "se": column -> list over draft counts ("single": a float);
      - "gap_percent": verifier -> list, 100 (opt - rate) / opt of the means,
        against the optimum of the verifier's draft law; "gap_se_percent" its
        standard error (cluster-robust, of the paired per-row differences);
      - "rrs_without_replacement_mean_bounds": [lower, upper] of the mean
        (lists over n), certified; "..._max_row_width": widest row bound;
      - "violations": number of rows where a verifier exceeds its optimum or
        the optimum without replacement is below the i.i.d. one (by > 1e-9);
      - truncation statistics and the numbers of rows and prompts.
    """
    mean, se = {}, {}
    for k in COLUMNS + ("single",):
        mean[k], se[k] = cluster_mean_se(rows[k], groups)
    gaps = theory.gap_to_optimum(mean)
    # the verifiers and optima are evaluated on the same rows: the gap's standard error is
    # that of the paired differences, far below the standard errors of the two means
    gap_se = {}
    for k, opt in DRAFT_LAW_OF.items():
        _, d_se = cluster_mean_se(rows[opt] - rows[k], groups)
        gap_se[k] = 100.0 * d_se / np.where(mean[opt] > 0, mean[opt], 1.0)
    width = rows["rrs_without_replacement_upper"] - rows["rrs_without_replacement_lower"]
    violations = {f"{k} > {opt}": int(np.sum(rows[k] > rows[opt] + _TOL))
                  for k, opt in _BOUND_OF.items()}
    violations["optimal_iid > optimal_without_replacement"] = int(np.sum(
        rows["optimal_iid"] > rows["optimal_without_replacement"] + _TOL))
    return dict(
        mean={k: _list(v) for k, v in mean.items()},
        se={k: _list(v) for k, v in se.items()},
        gap_percent={k: _list(v) for k, v in gaps.items()},
        gap_se_percent={k: _list(v) for k, v in gap_se.items()},
        rrs_without_replacement_mean_bounds=[_list(mean["rrs_without_replacement_lower"]),
                                             _list(mean["rrs_without_replacement_upper"])],
        rrs_without_replacement_max_row_width=_list(width.max(axis=0)),
        violations=violations,
        max_dropped_p=float(np.max(rows["dropped_p"])),
        max_dropped_q=float(np.max(rows["dropped_q"])),
        mean_support=float(np.mean(rows["support"])),
        rows=len(groups),
        prompts=len(np.unique(groups)),
    )


def _list(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x.tolist()


# --------------------------------------------------------------------------
# The whole comparison
# --------------------------------------------------------------------------


ModelSource = ModelPair | Callable[[], ModelPair]


def _materialize(model: ModelSource) -> ModelPair:
    return model() if callable(model) else model


def run(target: ModelSource, draft: ModelSource, items: Sequence[TextItem], settings: Settings,
        eos_ids: Sequence[int] = (), log: Callable[[str], None] | None = print,
        logits_cache: str | Path | None = None, cache_key: Any = None) -> dict[str, Any]:
    """Greedy continuations, logits, per-row rates and their summary.

    The models are used one after the other (target: continuations and
    logits; then draft: logits), so passing loaders instead of loaded models
    keeps only one model in memory at a time.

    Args:
      target, draft: `(ModelConfig, params)` pairs with the same vocabulary,
        or zero-argument callables returning them (loaded when needed and
        released after use).
      items: prompts as token ids.
      settings: what to measure.
      eos_ids: tokens that end a continuation early (kept as its last position).
      log: progress printer (None for silence).
      logits_cache: optional .npz path. If it holds the continuations and
        logits of the same prompts, models (`cache_key`), number of positions
        and EOS ids, the models are not run at all (re-analysis with other
        temperatures, draft counts or truncation); otherwise they are written
        there after the model phases (~1 GB for 20 prompts x 40 positions at
        V = 152k, float32).
      cache_key: JSON-able identity of the models (e.g. their names and dtype).

    Returns:
      dict with "settings", "num_drafts", "temperatures"; "summary":
      temperature (as str) -> {"all": summary, <source>: summary, ...} (see
      `summarize`) plus "validation" when min_prob > 0; "prompts": per prompt
      source, name, category, lengths and per-temperature means;
      "argmax_agreement": fraction of positions where the target's argmax in
      the scoring forward equals the generated greedy token (a check that both
      passes agree); "seconds": wall-clock per phase; "rows": the per-row
      arrays (temperature -> column -> [N, K] or [N], the prompt index and
      source of each row), which `write_outputs` saves as rows.npz.
    """
    log = log or (lambda s: None)
    if not items:
        raise ValueError("no prompts")
    if not callable(target) and not callable(draft):
        _check_vocab(target[0].vocab_size, draft[0].vocab_size)
    secs: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        secs[name] = secs.get(name, 0.0) + now - clock
        clock = now
        return secs[name]

    key = json.dumps(dict(models=cache_key, prompts=[list(it.ids) for it in items],
                          num_positions=settings.num_positions, eos_ids=[int(e) for e in eos_ids]))
    cached = _read_logits_cache(logits_cache, key) if logits_cache else None
    if cached is not None:
        conts, t_logits, d_logits = cached
        log(f"continuations and logits read from {logits_cache}: {lap('read_cache'):.1f} s")
    else:
        conts, t_logits, d_logits = _model_phases(target, draft, items, settings, eos_ids, log, lap)
        if logits_cache:
            _write_logits_cache(logits_cache, key, conts, t_logits, d_logits)
            log(f"logits written to {logits_cache}: {lap('write_cache'):.1f} s")
    keep = [i for i, c in enumerate(conts) if c]
    for i in sorted(set(range(len(items))) - set(keep)):
        log(f"  {items[i].source}/{items[i].name}: empty continuation, skipped")
    if not keep:
        raise ValueError("every continuation was empty")
    items = [items[i] for i in keep]
    conts, t_logits, d_logits = ([x[i] for i in keep] for x in (conts, t_logits, d_logits))
    agree = float(np.mean(np.concatenate(
        [np.argmax(z, axis=-1) == np.asarray(c) for z, c in zip(t_logits, conts)])))
    log(f"target argmax == greedy token at {agree:.1%} of the positions")

    temps = tuple(float(t) for t in settings.temperatures)
    per_temp: dict[float, list[dict[str, np.ndarray]]] = {t: [] for t in temps}
    prompts = []
    for i, (it, cont) in enumerate(zip(items, conts)):
        rec = dict(source=it.source, name=it.name, category=it.category,
                   prompt_tokens=len(it.ids), positions=len(cont), mean={})
        for t in temps:
            p, q = distributions(t_logits[i], t), distributions(d_logits[i], t)
            r = compare_prompt(p, q, settings)
            per_temp[t].append(r)
            rec["mean"][str(t)] = {k: _list(np.mean(r[k], axis=0))
                                   for k in VERIFIERS + OPTIMA + ("single",)}
        prompts.append(rec)
        log(f"  [{i + 1}/{len(items)}] {it.source}/{it.name}: {len(it.ids)} + {len(cont)} "
            f"tokens, theory {time.perf_counter() - clock:.1f} s")
        lap("theory")

    groups = np.concatenate([np.full(len(c), i) for i, c in enumerate(conts)])
    sources = np.array([it.source for it, c in zip(items, conts) for _ in c])
    summary, all_rows = {}, {}
    for t in temps:
        rows = {k: np.concatenate([r[k] for r in per_temp[t]]) for k in per_temp[t][0]}
        all_rows[str(t)] = rows
        s = {"all": summarize(rows, groups)}
        for src in dict.fromkeys(sources.tolist()):
            sel = sources == src
            s[src] = summarize({k: v[sel] for k, v in rows.items()}, groups[sel])
        if settings.min_prob > 0 and settings.validate_rows > 0:
            s["validation"] = _validate(t_logits, d_logits, rows, t, settings)
        summary[str(t)] = s
    if settings.min_prob > 0 and settings.validate_rows > 0:
        log(f"full-vocabulary validation: {lap('validation'):.1f} s")
    return dict(settings=dataclasses.asdict(settings), num_drafts=list(settings.num_drafts),
                temperatures=list(temps), summary=summary, prompts=prompts,
                argmax_agreement=agree, seconds=secs,
                rows=dict(per_temperature=all_rows, prompt=groups, source=sources))


def _model_phases(target, draft, items, settings, eos_ids, log, lap):
    """Greedy continuations and both models' logits; one model in memory at a time.

    Returns (continuations, target logits, draft logits), lists over items
    (empty continuations get empty [0, V] logits).
    """
    tm = _materialize(target)
    lap("load_target")
    conts = greedy_continuations(tm, [it.ids for it in items], settings.num_positions, eos_ids,
                                 settings.generate_batch)
    log(f"greedy continuations of {len(items)} prompts: {lap('generate'):.1f} s")

    def logits_of(model):
        V = model[0].vocab_size
        return [continuation_logits(model, it.ids, c, settings.length_bucket) if c
                else np.zeros((0, V), np.float32) for it, c in zip(items, conts)]

    t_logits = logits_of(tm)
    log(f"target logits: {lap('target_logits'):.1f} s")
    vocab = tm[0].vocab_size
    del tm
    gc.collect()
    dm = _materialize(draft)
    lap("load_draft")
    _check_vocab(vocab, dm[0].vocab_size)
    d_logits = logits_of(dm)
    log(f"draft logits: {lap('draft_logits'):.1f} s")
    del dm
    gc.collect()
    return conts, t_logits, d_logits


def _write_logits_cache(path, key: str, conts, t_logits, d_logits):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key)}
    for i, (c, t, d) in enumerate(zip(conts, t_logits, d_logits)):
        arrays[f"cont_{i}"] = np.asarray(c, np.int64)
        arrays[f"target_{i}"] = t
        arrays[f"draft_{i}"] = d
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _read_logits_cache(path, key: str):
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        n = sum(1 for k in z.files if k.startswith("cont_"))
        return ([z[f"cont_{i}"].tolist() for i in range(n)], [z[f"target_{i}"] for i in range(n)],
                [z[f"draft_{i}"] for i in range(n)])


def _check_vocab(target_vocab: int, draft_vocab: int):
    if target_vocab != draft_vocab:
        raise ValueError(
            f"draft vocabulary ({draft_vocab}) differs from the target's ({target_vocab})")


def _validate(t_logits, d_logits, rows, temperature, settings: Settings) -> dict[str, Any]:
    """Recomputes a few rows on the full vocabulary; max |truncated - full| per column."""
    offsets = np.cumsum([0] + [z.shape[0] for z in t_logits])
    total = int(offsets[-1])
    pick = np.unique(np.linspace(0, total - 1, min(settings.validate_rows, total)).astype(int))
    which = np.searchsorted(offsets, pick, side="right") - 1
    p = np.stack([distributions(t_logits[w][r - offsets[w]][None], temperature)[0]
                  for w, r in zip(which, pick)])
    q = np.stack([distributions(d_logits[w][r - offsets[w]][None], temperature)[0]
                  for w, r in zip(which, pick)])
    full = compare_prompt(p, q, dataclasses.replace(settings, min_prob=0.0))
    diff = {k: _list(np.abs(rows[k][pick] - full[k]).max(axis=0)) for k in VERIFIERS + OPTIMA}
    exact = [k for k in VERIFIERS + OPTIMA if k != "rrs_without_replacement"]
    return dict(rows=pick.tolist(), max_abs_diff=diff,
                max_abs_diff_exact_columns=float(max(max(np.atleast_1d(diff[k])) for k in exact)))


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


def markdown_table(result: dict[str, Any], group: str = "all") -> str:
    """One block per temperature: rows = verifiers and optima, columns = draft counts.

    Cells are "mean ± se" (cluster-robust over prompts) and, for the
    verifiers with a gap, "(gap x ± se%)" to the optimum of their draft law
    (the se of the paired differences).
    """
    ns = result["num_drafts"]
    lines = []
    for t in result["temperatures"]:
        s = result["summary"][str(t)][group]
        lines.append(f"**temperature {t}** ({s['rows']} positions, {s['prompts']} prompts; "
                     f"n = 1, 1 - TV(p, q) = {_fmt(s['mean']['single'], s['se']['single'])})")
        lines.append("")
        lines.append("| verifier | " + " | ".join(f"n = {n}" for n in ns) + " |")
        lines.append("|---|" + "---|" * len(ns))
        for k in VERIFIERS + OPTIMA:
            cells = []
            for j in range(len(ns)):
                cell = _fmt(s["mean"][k][j], s["se"][k][j])
                if k in s["gap_percent"] and k != "greedy":
                    gap, gse = s["gap_percent"][k][j], s["gap_se_percent"][k][j]
                    gse = f" ± {gse:.2f}" if gse is not None and np.isfinite(gse) else ""
                    cell += f" (gap {gap:.2f}{gse}%)"
                cells.append(cell)
            lines.append(f"| {NAMES[k]} | " + " | ".join(cells) + " |")
        notes = []
        lo, hi = s["rrs_without_replacement_mean_bounds"]
        wide = [f"n = {n}: [{a:.4f}, {b:.4f}]" for n, a, b in zip(ns, lo, hi) if b - a > 5e-5]
        if wide:
            notes.append("RRS without replacement is the midpoint of certified bounds; bounds on "
                         "the mean: " + ", ".join(wide))
        if s["max_dropped_p"] > 0 or s["max_dropped_q"] > 0:
            note = (f"support truncated to p or q >= {result['settings']['min_prob']:g} "
                    f"(mean {s['mean_support']:.0f} tokens; dropped mass per row <= "
                    f"{s['max_dropped_p']:.1e} of p, {s['max_dropped_q']:.1e} of q)")
            val = result["summary"][str(t)].get("validation")
            if val:
                note += (f"; {len(val['rows'])} rows recomputed on the full vocabulary differ by "
                         f"<= {val['max_abs_diff_exact_columns']:.1e}")
            notes.append(note)
        bad = {k: v for k, v in s["violations"].items() if v}
        if bad:
            notes.append(f"CONSISTENCY VIOLATIONS: {bad}")
        if notes:
            lines.append("")
            lines += [f"- {n}." for n in notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(mean: float, se: float | None) -> str:
    if se is None or not np.isfinite(se):  # one prompt: no standard error
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {se:.4f}"


def plot(result: dict[str, Any], path: str | Path, group: str = "all", title: str = "") -> Path:
    """Acceptance vs number of drafts, one panel per temperature, optima dashed.

    n = 1 is the single-draft rate 1 - TV(p, q), shared by every line.
    Error bars: one cluster-robust standard error.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [1] + list(result["num_drafts"])
    temps = result["temperatures"]
    style = {
        "rrs_with_replacement": dict(color="C0", marker="o"),
        "kseq": dict(color="C1", marker="s"),
        "rrs_without_replacement": dict(color="C2", marker="^"),
        "greedy": dict(color="C3", marker="D"),
        "optimal_iid": dict(color="C0", marker="", linestyle="--"),
        "optimal_without_replacement": dict(color="C2", marker="", linestyle="--"),
    }
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 4.2), sharey=True,
                             squeeze=False)
    for ax, t in zip(axes[0], temps):
        s = result["summary"][str(t)][group]
        for k in VERIFIERS + OPTIMA:
            y = np.array([s["mean"]["single"]] + list(s["mean"][k]))
            e = np.array([s["se"]["single"]] + list(s["se"][k]), dtype=float)
            ax.errorbar(ns, y, yerr=np.nan_to_num(e), label=NAMES[k], capsize=2, **style[k])
        ax.set_title(f"temperature {t} ({s['rows']} positions)")
        ax.set_xlabel("number of drafts n")
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean acceptance rate")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], workdir: str | Path, title: str = "") -> dict[str, Path]:
    """Writes table.md (all prompts, then per source), results.json, plot.png and rows.npz.

    rows.npz holds the per-row arrays ("<temperature>/<column>", "prompt",
    "source"), for analyses beyond the summary.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = result.get("rows")
    if rows is not None:
        arrays = {f"{t}/{k}": v for t, cols in rows["per_temperature"].items()
                  for k, v in cols.items()}
        np.savez(workdir / "rows.npz", prompt=rows["prompt"], source=rows["source"], **arrays)
        result = {k: v for k, v in result.items() if k != "rows"}
    first = result["summary"][str(result["temperatures"][0])]
    groups = [g for g in first if g != "validation"]
    parts = [f"### {g}\n\n" + markdown_table(result, g) for g in groups]
    (workdir / "table.md").write_text("\n".join(parts))
    (workdir / "results.json").write_text(json.dumps(_jsonable(result), indent=1))
    png = plot(result, workdir / "plot.png", title=title)
    paths = dict(table=workdir / "table.md", results=workdir / "results.json", plot=png)
    if rows is not None:
        paths["rows"] = workdir / "rows.npz"
    return paths


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# --------------------------------------------------------------------------
# Config-driven experiment (experiments/theory_optimal.py)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Typed form of configs/theory_optimal.py.

    Attributes:
      target, draft: asset names, GGUF paths or HF directories (same tokenizer).
      dtype: parameter dtype.
      chat: wrap Spec-Bench questions in the target's chat template
        (HumanEval prompts are raw code either way).
      max_prompt_tokens: Spec-Bench questions longer than this are skipped
        (the next ones of the category are taken); HumanEval ones are dropped.
      cache_logits: keep the continuations and logits in workdir/logits.npz
        (~1 GB) and reuse them when the prompts and models are the same.
      settings: what to measure.
      prompts: which prompts (`prompts.humaneval` accepts "0,5,7" and "0-9").
    """

    target: str
    draft: str
    dtype: str = "float32"
    chat: bool = True
    max_prompt_tokens: int = 512
    cache_logits: bool = True
    settings: Settings = Settings()
    prompts: PromptConfig = PromptConfig()


def from_config_dict(c) -> ExperimentConfig:
    """ExperimentConfig from a ConfigDict / dict; unknown keys raise ValueError naming them.

    List-valued settings may be comma-separated strings ("0.7,1.0").
    """
    d = dict(c.to_dict() if hasattr(c, "to_dict") else c)
    _check_keys(ExperimentConfig, d, "config")
    s = dict(d.get("settings", {}))
    _check_keys(Settings, s, "config.settings")
    for key, typ in (("temperatures", float), ("num_drafts", int)):
        if key in s:
            v = s[key]
            s[key] = tuple(typ(x) for x in (v.split(",") if isinstance(v, str) else v))
    d["settings"] = Settings(**s)
    p = dict(d.get("prompts", {}))
    _check_keys(PromptConfig, p, "config.prompts")
    d["prompts"] = PromptConfig(**p)
    return ExperimentConfig(**d)


def _check_keys(cls, d, where):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where}; valid: {sorted(names)}")


def _indices(spec: str) -> list[int]:
    out = []
    for part in (x.strip() for x in str(spec).split(",")):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def select_prompts(tok, pc: PromptConfig, chat: bool = True, max_prompt_tokens: int = 512,
                   log: Callable[[str], None] | None = print) -> list[TextItem]:
    """Encodes the configured Spec-Bench and HumanEval prompts (first turn only).

    Spec-Bench: the first `pc.per_category` questions of each category whose
    encoding has at most `max_prompt_tokens` tokens. HumanEval: the listed
    problems (raw code prompts), dropping too long ones.
    """
    from specjax.bench import prompts as prompts_lib
    from specjax.bench.runner import encode_turns

    log = log or (lambda s: None)
    items: list[TextItem] = []
    cats = [c.strip() for c in pc.spec_bench_categories.split(",") if c.strip()]
    if cats:
        taken: dict[str, int] = {}
        for pr in prompts_lib.load_spec_bench(pc.spec_bench_path or None, cats, None, 1):
            if taken.get(pr.category, 0) >= pc.per_category:
                continue
            ids = encode_turns(tok, pr, [], chat)
            if len(ids) > max_prompt_tokens:
                continue
            taken[pr.category] = taken.get(pr.category, 0) + 1
            items.append(TextItem("spec_bench", pr.question_id, pr.category, tuple(ids)))
        short = {c: taken.get(c, 0) for c in cats if taken.get(c, 0) < pc.per_category}
        if short:
            log(f"Spec-Bench categories with fewer than {pc.per_category} prompts of <= "
                f"{max_prompt_tokens} tokens: {short}")
    if pc.humaneval:
        for pr in prompts_lib.load_humaneval(_indices(pc.humaneval)):
            ids = encode_turns(tok, pr, [], chat)
            if len(ids) > max_prompt_tokens:
                log(f"HumanEval {pr.question_id}: {len(ids)} tokens > {max_prompt_tokens}, dropped")
                continue
            items.append(TextItem("humaneval", pr.question_id, pr.category, tuple(ids)))
    if not items:
        raise ValueError("the config selects no prompts (set prompts.spec_bench_categories "
                         "and/or prompts.humaneval)")
    return items


def run_experiment(cfg: ExperimentConfig, workdir: str | Path,
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Loads the tokenizer and prompts, runs `run` with model loaders, writes the outputs.

    Writes workdir/table.md, workdir/results.json (config, summary, per-prompt
    means, timings, machine load), workdir/plot.png and, with
    `cfg.cache_logits`, workdir/logits.npz (reused by the next run).
    """
    from specjax.models import loading
    from specjax.models.tokenizer import stop_token_ids

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    tok = loading.load_tokenizer(cfg.target, progress=False)
    items = select_prompts(tok, cfg.prompts, cfg.chat, cfg.max_prompt_tokens, log)
    counts: dict[str, int] = {}
    for it in items:
        counts[it.source] = counts.get(it.source, 0) + 1
    if log:
        log(f"{len(items)} prompts: {counts}")
    cache = Path(workdir) / "logits.npz" if cfg.cache_logits else None
    result = run(lambda: load_model(cfg.target, cfg.dtype),
                 lambda: load_model(cfg.draft, cfg.dtype), items, cfg.settings,
                 eos_ids=stop_token_ids(tok), log=log, logits_cache=cache,
                 cache_key=dict(target=cfg.target, draft=cfg.draft, dtype=cfg.dtype))
    result["config"] = _jsonable(dataclasses.asdict(cfg))
    result["seconds"]["total"] = time.perf_counter() - t0
    result["platform"] = str(jax.devices()[0].platform)
    result["cpu_count"] = os.cpu_count()
    result["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    title = f"target {cfg.target}, draft {cfg.draft}"
    result["paths"] = {k: str(v) for k, v in write_outputs(result, workdir, title).items()}
    return result

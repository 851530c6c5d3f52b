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
forward of each model over the whole text gives the logits there
(`teacher_forced`). The models are used one after the other, so only one is
in memory at a time.

Standard errors treat the prompts as independent clusters and the gaps use
paired per-row differences (`verifier_stats`). Support truncation
(`Settings.min_prob > 0`, `verifier_rates.truncate_support`) makes the
152k-token computations affordable; the dropped masses are recorded, and
`Settings.validate_rows` rows per temperature are recomputed on the full
vocabulary to report the actual error. With min_prob = 0 every rate is
exact, except RRS without replacement for n >= 3, which
`theory.compare_verifiers` returns as certified bounds (the table shows their
midpoint and the width of the bounds on the mean).

Layout, one concept per module:
  `teacher_forced`   models -> logits (`continuation_logits`);
  `verifier_rates`   logits -> laws -> per-row rates (`distributions`,
                     `compare_prompt`);
  `verifier_stats`   rows -> means, standard errors, gaps, consistency
                     counts (`summarize`);
  `logits_cache`     the .npz of continuations and logits that lets a
                     re-analysis skip the models;
  `verifier_report`  `markdown_table`, `plot`, `write_outputs`;
  this module        `greedy_continuations`, `run` (all of it for token-id
                     prompts) and the config-driven experiment
                     (`experiments/theory_optimal.py`): `ExperimentConfig`,
                     `from_config_dict`, `select_prompts`, `run_experiment`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from specjax import decode
from specjax.bench.experiment import PromptConfig
from specjax.bench.logits_cache import read_logits_cache, write_logits_cache
from specjax.bench.teacher_forced import ModelPair, continuation_logits
from specjax.bench.verifier_rates import OPTIMA, VERIFIERS, compare_prompt, distributions
from specjax.bench.verifier_report import jsonable, write_outputs
from specjax.bench.verifier_stats import as_list, summarize


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
# Models: continuations and loading
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
    cached = read_logits_cache(logits_cache, key) if logits_cache else None
    if cached is not None:
        conts, t_logits, d_logits = cached
        log(f"continuations and logits read from {logits_cache}: {lap('read_cache'):.1f} s")
    else:
        conts, t_logits, d_logits = _model_phases(target, draft, items, settings, eos_ids, log, lap)
        if logits_cache:
            write_logits_cache(logits_cache, key, conts, t_logits, d_logits)
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
            r = compare_prompt(p, q, settings.num_drafts, settings.min_prob,
                               settings.max_histories)
            per_temp[t].append(r)
            rec["mean"][str(t)] = {k: as_list(np.mean(r[k], axis=0))
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
    full = compare_prompt(p, q, settings.num_drafts, 0.0, settings.max_histories)
    diff = {k: as_list(np.abs(rows[k][pick] - full[k]).max(axis=0)) for k in VERIFIERS + OPTIMA}
    exact = [k for k in VERIFIERS + OPTIMA if k != "rrs_without_replacement"]
    return dict(rows=pick.tolist(), max_abs_diff=diff,
                max_abs_diff_exact_columns=float(max(max(np.atleast_1d(diff[k])) for k in exact)))


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
    result["config"] = jsonable(dataclasses.asdict(cfg))
    result["seconds"]["total"] = time.perf_counter() - t0
    result["platform"] = str(jax.devices()[0].platform)
    result["cpu_count"] = os.cpu_count()
    result["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    title = f"target {cfg.target}, draft {cfg.draft}"
    result["paths"] = {k: str(v) for k, v in write_outputs(result, workdir, title).items()}
    return result

"""What the speculative loop costs beyond its forwards.

Two measurements on the same prompts, methods interleaved (every repeat runs
every method once, so machine noise hits all of them):

(a) *Loop overhead per token*: a method that verifies only the root on every
    step (a `FixedLength(0)` policy: nothing is drafted, one token per target
    forward) against the autoregressive loop. With a model-free drafter
    (prompt lookup) this is the bare cost of the speculative loop's
    bookkeeping; with a draft model the draft must still catch up on every
    committed token, eagerly (`max_pending=1`: one draft forward per step),
    lazily (`max_pending=P`: one forward of up to P queued tokens) or deferred
    (a queue as long as the generation: no draft forward until a step drafts,
    so none here), and the expected time adds those forwards.
(b) *Step cost*: a draft-model chain of k drafts, measured time per step
    against the sum of its bare forwards (k draft forwards of one token, one
    target forward of k + 1 tokens, and the pending-leaf catch-up forward on
    the steps that accepted every draft).

(c) *Step costs* (`specjax.bench.step_costs`, with a draft model): SmartSpec with
    its time model calibrated on the loop's own step time vs built from bare
    forwards, both against the autoregressive loop: measured speedup and the
    speedup the calibrated model predicts for the steps each run took.

Times are decode-phase only: each loop's prefills (the target's and, for a
draft model, the draft's) are timed separately and subtracted. Bare forwards
are jitted forwards against a cache of the loop's own size holding the mean
context of the run (`specjax.timing.forward_time`).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Sequence

import jax
import numpy as np

from specjax import decode, policies, verify
from specjax.bench.loop_runs import bucket_and_cache, generation_of, loop_calls, padded
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models.lm import LanguageModel
from specjax.timing import forward_time, interleaved_seconds, prefill_time


@dataclasses.dataclass
class Row:
    """One method on one prompt: decode-phase seconds and what the loop did."""

    method: str
    prompt: int
    seconds: float  # median total loop time
    decode_seconds: float  # minus the prefills
    tokens: int
    steps: int
    draft_forwards: float  # draft forwards of the decode phase (model drafters)
    identical: bool  # same tokens as the autoregressive loop


def methods(target: LanguageModel, draft: LanguageModel | None, k: int,
            lazy: int, max_new_tokens: int) -> dict[str, decode.Method | None]:
    """The methods of (a) and (b); None = the autoregressive loop."""
    never = policies.FixedLength(0)
    out: dict[str, decode.Method | None] = {
        "autoregressive": None,
        "null_pld": decode.Method(PromptLookup(target.vocab_size, num_drafts=k), verify.greedy,
                                  never),
    }
    if draft is not None:
        out["null_draft_eager"] = decode.Method(DraftModel.chain(draft, k), verify.greedy, never)
        out["null_draft_lazy"] = decode.Method(DraftModel.chain(draft, k, max_pending=lazy),
                                               verify.greedy, never)
        # a queue as long as the generation: no draft work until a step drafts
        out["null_draft_deferred"] = decode.Method(
            DraftModel.chain(draft, k, max_pending=max_new_tokens), verify.greedy, never)
        out[f"chain_k{k}"] = decode.Method(DraftModel.chain(draft, k), verify.greedy)
    return out


def measure(target: LanguageModel, target_params, draft: LanguageModel | None, draft_params,
            prompts: Sequence[Sequence[int]], *, max_new_tokens: int, k: int = 4,
            lazy: int = 16, repeats: int = 5, log: Callable[[str], None] = print) -> dict:
    """Runs (a) and (b) on each prompt (batch 1, greedy); see the module docstring.

    Returns a dict with `rows` (list of `Row` as dicts), `bare` (bare forward
    seconds per prompt) and `summary` (medians over prompts of the ratios).
    """
    ms = methods(target, draft, k, lazy, max_new_tokens)
    rows, bare = [], []
    # one padded length and cache size for every prompt: each loop compiles once
    bucket, max_len = bucket_and_cache(prompts, max_new_tokens, extra=k + 1)
    for i, ids in enumerate(prompts):
        tokens, lengths = padded(ids, bucket, target.vocab_size)
        calls = loop_calls(target, target_params, draft_params, tokens, lengths, ms,
                           max_new_tokens=max_new_tokens, max_len=max_len)
        timed = interleaved_seconds(calls, repeats)
        ctx = int(lengths[0]) + max_new_tokens // 2
        ctx_args = dict(context=ctx, max_len=max_len, repeats=7)
        b = {"target_prefill": prefill_time(target, target_params, tokens, lengths, max_len),
             "target_1": forward_time(target, target_params, num_tokens=1, **ctx_args),
             f"target_{k + 1}": forward_time(target, target_params, num_tokens=k + 1,
                                             **ctx_args)}
        if draft is not None:
            b["draft_prefill"] = prefill_time(draft, draft_params, tokens, lengths, max_len)
            b["draft_1"] = forward_time(draft, draft_params, num_tokens=1, **ctx_args)
            b[f"draft_{lazy}"] = forward_time(draft, draft_params, num_tokens=lazy, **ctx_args)
        bare.append(b)
        ref = generation_of(timed["autoregressive"][0], False)[2]
        for name, m in ms.items():
            out, total = timed[name]
            _, stats, toks = generation_of(out, m is not None)
            n = len(toks)
            steps = n - 1 if stats is None else int(stats.steps[0])
            drafted = m is not None and isinstance(m.drafter, DraftModel)
            prefills = b["target_prefill"] + (b["draft_prefill"] if drafted else 0.0)
            rows.append(Row(name, i, total, total - prefills, n, steps,
                            draft_forwards(name, stats, steps, k, lazy) if drafted else 0.0,
                            bool(np.array_equal(toks, ref[:n]))))
            log(f"prompt {i} {name:18s} {1e3 * rows[-1].decode_seconds / n:8.2f} ms/token  "
                f"steps {steps}")
    return {"rows": [dataclasses.asdict(r) for r in rows], "bare": bare,
            "summary": summarize(rows, bare, k, lazy)}


def draft_forwards(name: str, stats, steps: int, k: int, lazy: int) -> float:
    """Draft forwards a draft-model method ran after its prefill (catch-up included,
    counted in forwards of one token; a lazy catch-up of up to `lazy` tokens counts
    as one forward of `lazy` tokens, see `expected_seconds`)."""
    if name == "null_draft_eager":
        return float(steps)  # every committed token is fed at the next step
    if name == "null_draft_lazy":
        return float(-(-steps // lazy))  # one queue flush per `lazy` tokens
    if name == "null_draft_deferred":
        return 0.0  # the queue never fills
    full = int(np.asarray(stats.accept_hist)[0, k])  # steps that accepted every draft
    return float(k * steps + full)


def expected_seconds(row: Row, bare: dict, k: int, lazy: int) -> float:
    """The decode phase's sum of bare forwards for the row's method."""
    if row.method in ("autoregressive", "null_pld", "null_draft_deferred"):
        return row.steps * bare["target_1"]
    if row.method == "null_draft_eager":
        return row.steps * (bare["target_1"] + bare["draft_1"])
    if row.method == "null_draft_lazy":
        return row.steps * bare["target_1"] + row.draft_forwards * bare[f"draft_{lazy}"]
    return row.steps * bare[f"target_{k + 1}"] + row.draft_forwards * bare["draft_1"]


def summarize(rows: Sequence[Row], bare: Sequence[dict], k: int, lazy: int) -> dict:
    """Medians over prompts: per-token time relative to the autoregressive loop,
    and measured decode time relative to the sum of its bare forwards."""
    by = {}
    for r in rows:
        by.setdefault(r.method, []).append(r)
    ar = {r.prompt: r.decode_seconds / r.tokens for r in by["autoregressive"]}
    out = {}
    for name, rs in by.items():
        out[name] = {
            "ms_per_token": 1e3 * statistics.median(r.decode_seconds / r.tokens for r in rs),
            "vs_autoregressive": statistics.median(
                (r.decode_seconds / r.tokens) / ar[r.prompt] for r in rs),
            "vs_bare_forwards": statistics.median(
                r.decode_seconds / expected_seconds(r, bare[r.prompt], k, lazy) for r in rs),
            "ms_per_step": 1e3 * statistics.median(r.decode_seconds / r.steps for r in rs),
            "tokens_per_step": statistics.median(r.tokens / max(r.steps, 1) for r in rs),
            "identical": all(r.identical for r in rs),
        }
    return out


# -- experiment ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoopOverheadConfig:
    """`configs/loop_overhead.py`: target, draft ("" = none, "self:L", an asset),
    prompts (HumanEval / Spec-Bench selection), tokens per prompt, k, the lazy
    queue length and timed repeats per prompt."""

    target: str = "smollm2-135m"
    draft: str = "self:10"
    dtype: str = "float32"
    layout: str = "auto"
    chat: bool = False
    max_prompt_tokens: int = 512
    max_new_tokens: int = 128
    k: int = 4
    lazy: int = 16
    repeats: int = 5
    smartspec_max_k: int = 4  # (c) SmartSpec's step costs (`bench.step_costs`); 0 = skip
    smartspec_pending: int = 4
    prompts: object = None  # bench.experiment.PromptConfig


def from_config_dict(c) -> LoopOverheadConfig:
    from specjax.bench.experiment import PromptConfig, checked_keys

    d = checked_keys(LoopOverheadConfig, c.to_dict() if hasattr(c, "to_dict") else c, "config")
    d["prompts"] = PromptConfig(**checked_keys(PromptConfig, d.get("prompts") or {},
                                               "config.prompts"))
    return LoopOverheadConfig(**d)


def run_experiment(cfg: LoopOverheadConfig, workdir, log: Callable[[str], None] = print) -> dict:
    """Loads the models and prompts, runs `measure`, writes workdir/results.json and
    table.md; returns the result (with the table under "table")."""
    import json
    import os
    import platform
    from pathlib import Path

    from specjax.bench import step_costs
    from specjax.bench.experiment import enable_compilation_cache, jsonable, load_models
    from specjax.bench.theory_experiment import select_prompts
    from specjax.models import loading
    from specjax.models.layout import cpu_name
    from specjax.models.lm import DecoderLM

    enable_compilation_cache()
    tok = loading.load_tokenizer(cfg.target, progress=False)
    items = select_prompts(tok, cfg.prompts, cfg.chat, cfg.max_prompt_tokens, log)
    (tcfg, tparams), draft = load_models(cfg.target, cfg.draft, cfg.dtype, cfg.layout,
                                         progress=False)
    result = measure(DecoderLM(tcfg), tparams, None if draft is None else DecoderLM(draft[0]),
                     None if draft is None else draft[1], [it.ids for it in items],
                     max_new_tokens=cfg.max_new_tokens, k=cfg.k, lazy=cfg.lazy,
                     repeats=cfg.repeats, log=log)
    if draft is not None and cfg.smartspec_max_k > 0:
        result["smartspec"] = step_costs.measure_smartspec(
            DecoderLM(tcfg), tparams, DecoderLM(draft[0]), draft[1], [it.ids for it in items],
            max_new_tokens=cfg.max_new_tokens, max_k=cfg.smartspec_max_k,
            max_pending=cfg.smartspec_pending, repeats=cfg.repeats, log=log)
    result["config"] = jsonable(dataclasses.asdict(cfg))
    result["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(),
                         "python": platform.python_version(), "jax": jax.__version__,
                         "loadavg_after": os.getloadavg()}
    result["table"] = table(result["summary"], cfg)
    if "smartspec" in result:
        result["table"] += "\n\n" + smartspec_table(result["smartspec"], cfg)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(result), indent=1))
    (out / "table.md").write_text(result["table"] + "\n")
    return result


def table(summary: dict, cfg: LoopOverheadConfig) -> str:
    lines = [f"Loop overhead: {cfg.target} (draft {cfg.draft or 'none'}), {cfg.max_new_tokens} "
             f"tokens per prompt, medians over prompts", "",
             "| method | ms/token | vs autoregressive | vs bare forwards | ms/step | tokens/step "
             "| identical |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['ms_per_token']:.2f} | {s['vs_autoregressive']:.3f} | "
                     f"{s['vs_bare_forwards']:.3f} | {s['ms_per_step']:.2f} | "
                     f"{s['tokens_per_step']:.2f} | {s['identical']} |")
    return "\n".join(lines)


def smartspec_table(res: dict, cfg: LoopOverheadConfig) -> str:
    """(c): the calibration and SmartSpec's measured vs modelled speedups."""
    c = res["calibration"]
    measured = ", ".join(f"k={k}: {1e3 * v:.2f} ms" for k, v in c["measured"].items())
    lines = [f"SmartSpec step costs (max_k {cfg.smartspec_max_k}, draft queue "
             f"{cfg.smartspec_pending}): loop step time {measured}; fit T_loop(k) = "
             f"{1e3 * c['a']:.2f} ms + {1e3 * c['b']:.2f} ms x T_bare(k)/T_bare(0); held-out "
             f"k={c['held_out_k']}: modelled {1e3 * c['held_out_modelled']:.2f} ms, measured "
             f"{1e3 * c['held_out_measured']:.2f} ms", "",
             "costs T(0..K): bare " + " ".join(f"{x:.3f}" for x in c["bare"])
             + "; loop " + " ".join(f"{x:.3f}" for x in c["costs"]), "",
             "| method | speedup (measured) | speedup (loop model) | mean k | tokens/step | "
             "identical |", "|---|---|---|---|---|---|"]
    for name, s in res["summary"].items():
        model = f"{s['modelled_speedup']:.3f}" if "modelled_speedup" in s else "-"
        mean_k = f"{s['mean_k']:.2f}" if "mean_k" in s else "-"
        lines.append(f"| {name} | {s['speedup']:.3f} | {model} | {mean_k} | "
                     f"{s['tokens_per_step']:.2f} | {s['identical']} |")
    return "\n".join(lines)

"""Measured vs predicted tokens per target call of chain speculative sampling.

The closed form of Leviathan et al. (arXiv:2211.17192, Eq. 1) predicts the
expected tokens per target call of a chain of k drafts from one acceptance
rate alpha, E = (1 - alpha^(k+1)) / (1 - alpha), with alpha = E_t[1 - TV(p_t,
q_t)], the mean single-draft acceptance of the standard verifier over
contexts t. This module checks that prediction against the speculative loop.

For each temperature T and chain length k:

1. measured: `decode.speculative_generate` with `DraftModel.chain(k)` and
   `verify.chain_sampling`, sampling at T (p and q processed alike), over the
   prompts; tau = generated tokens per target forward of the loop (bonus
   included, prefill excluded), pooled over prompts (`decode.tau_of_hist`).
2. predicted, from the texts the loop produced: one causal forward of each
   model over prompt ++ continuation gives p_t and q_t at every generated
   position t, hence a_t = 1 - TV(p_t, q_t) (the exact acceptance of the
   first draft of a step starting at t). Two predictions:
     - "iid": Eq. 1 with alpha = mean_t a_t (the paper's assumption);
     - "positional": mean over start positions t of
       `theory.expected_tokens_per_position(a[t:t+k])`, i.e. the acceptance
       changes along the text but draft i of a step is accepted with the rate
       of the position it lands on.
   Both assume that after an accepted draft the next draft's acceptance is
   that of the realised text, which is exact when all drafts are accepted;
   after a rejection the text continues with the residual sample, whose
   context the scoring pass sees as well. Where the two differ from the
   measurement, acceptance is correlated along the text (easy stretches are
   accepted in runs), which Eq. 1 cannot express.

The models are a `(ModelConfig, params)` pair each; the library functions
take token-id prompts so they run on the tiny models of the tests too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from specjax import decode, theory, verify
from specjax.bench.teacher_forced import continuation_logits
from specjax.bench.verifier_rates import distributions
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM
from specjax.sampling import Sampling

ModelPair = tuple[Any, Any]  # (ModelConfig, params)


def acceptance_along(target: ModelPair, draft: ModelPair, prompt: Sequence[int],
                     continuation: Sequence[int], temperature: float) -> np.ndarray:
    """a_t = 1 - TV(p_t, q_t) at every position of `continuation`: float64[M].

    Row t compares the processed laws of the token continuation[t] given
    prompt ++ continuation[:t].
    """
    if not continuation:
        return np.zeros(0)
    p = distributions(continuation_logits(target, prompt, continuation), temperature)
    q = distributions(continuation_logits(draft, prompt, continuation), temperature)
    return 1.0 - 0.5 * np.abs(p - q).sum(axis=-1)


def predicted_tokens(a: np.ndarray, k: int) -> dict[str, float]:
    """Predicted tokens per target call for chains of k drafts from per-position rates a [M].

    iid: Eq. 1 at alpha = mean(a); positional: mean over starts t <= M - k of
    `expected_tokens_per_position(a[t:t+k])` (all starts when M < k + 1,
    with the windows truncated).
    """
    a = np.asarray(a, np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"need a non-empty 1-D array of acceptance rates, got shape {a.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return dict(iid=float(theory.expected_tokens(float(a.mean()), k)),
                positional=float(_per_start(a, k).mean()), alpha=float(a.mean()))


def _per_start(a: np.ndarray, k: int) -> np.ndarray:
    """Expected tokens of a step starting at each position t <= M - k: float64[max(1, M-k+1)]."""
    return np.asarray([theory.expected_tokens_per_position(a[t:t + k])
                       for t in range(max(1, a.size - k + 1))])


def run(target: ModelPair, draft: ModelPair, prompts: Sequence[Sequence[int]], *,
        temperatures: Sequence[float], ks: Sequence[int], num_tokens: int,
        eos_ids: Sequence[int] = (), batch_size: int = 4, seed: int = 0,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measured and predicted tokens per call for every (temperature, k).

    Returns {"rows": [dict(temperature, k, measured, iid, positional, alpha,
    steps, tokens, per_prompt=[...]), ...], "seconds": {...}}.
    """
    log = log or (lambda s: None)
    tcfg, tparams = target
    dcfg, dparams = draft
    if tcfg.vocab_size != dcfg.vocab_size:
        raise ValueError(f"draft vocabulary ({dcfg.vocab_size}) differs from the target's "
                         f"({tcfg.vocab_size})")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows, t_gen, t_score = [], 0.0, 0.0
    for temp in temperatures:
        sampling = Sampling(temperature=float(temp))
        for k in ks:
            method = decode.Method(DraftModel.chain(DecoderLM(dcfg), int(k)),
                                   verify.chain_sampling)
            hist = np.zeros(int(k) + 1, np.int64)
            per_prompt = []
            t0 = time.perf_counter()
            conts: dict[int, list[int]] = {}
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                g = decode.speculative_generate(
                    tparams, tcfg, [list(prompts[i]) for i in idx], method=method,
                    draft_params=dparams, max_new_tokens=num_tokens, sampling=sampling,
                    key=jax.random.key(seed + s), eos_ids=eos_ids)
                hist += g.accept_hist.sum(axis=0)
                for j, i in enumerate(idx):
                    conts[i] = g.tokens[j]
                    per_prompt.append(dict(prompt=i, tokens=len(g.tokens[j]),
                                           measured=decode.tau_of_hist(g.accept_hist[j])))
            t_gen += time.perf_counter() - t0
            t0 = time.perf_counter()
            rates = {i: acceptance_along(target, draft, prompts[i], conts[i], temp)
                     for i in order if conts[i]}
            t_score += time.perf_counter() - t0
            # pooled over prompts: every position (alpha) and every start (positional) once;
            # windows never cross from one prompt's text into the next
            alpha = float(np.concatenate(list(rates.values())).mean())
            pooled = dict(alpha=alpha, iid=float(theory.expected_tokens(alpha, int(k))),
                          positional=float(np.concatenate(
                              [_per_start(a, int(k)) for a in rates.values()]).mean()))
            for pp in per_prompt:
                if pp["prompt"] in rates:
                    pp.update(predicted_tokens(rates[pp["prompt"]], int(k)))
            row = dict(temperature=float(temp), k=int(k), measured=decode.tau_of_hist(hist),
                       steps=int(hist.sum()), tokens=int(sum(len(c) for c in conts.values())),
                       per_prompt=per_prompt, **pooled)
            rows.append(row)
            log(f"T={temp} k={k}: measured {row['measured']:.3f}, iid {row['iid']:.3f}, "
                f"positional {row['positional']:.3f} (alpha {row['alpha']:.3f}, "
                f"{row['steps']} steps)")
    return dict(rows=rows, seconds=dict(generate=t_gen, score=t_score))


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| T | k | alpha = mean(1 - TV) | measured tokens/call | predicted, Eq. 1 (iid) "
             "| predicted, positional | steps |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['temperature']} | {r['k']} | {r['alpha']:.3f} | {r['measured']:.3f} "
            f"| {r['iid']:.3f} ({100 * (r['iid'] / r['measured'] - 1):+.1f}%) "
            f"| {r['positional']:.3f} ({100 * (r['positional'] / r['measured'] - 1):+.1f}%) "
            f"| {r['steps']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The config-driven experiment (experiments/chain_prediction.py)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Typed form of configs/chain_prediction.py (unknown keys are errors)."""

    target: str
    draft: str
    dtype: str = "float32"
    layout: str = "auto"
    chat: bool = True
    max_prompt_tokens: int = 384
    temperatures: tuple[float, ...] = (0.7, 1.0)
    ks: tuple[int, ...] = (2, 4)
    num_tokens: int = 48
    batch_size: int = 4
    seed: int = 0
    prompts: Any = None  # bench.experiment.PromptConfig


def from_config_dict(c) -> ExperimentConfig:
    from specjax.bench.experiment import PromptConfig

    d = dict(c.to_dict() if hasattr(c, "to_dict") else c)
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in config; valid: {sorted(names)}")
    for key, typ in (("temperatures", float), ("ks", int)):
        if key in d:
            v = d[key]
            d[key] = tuple(typ(x) for x in (v.split(",") if isinstance(v, str) else v))
    p = dict(d.get("prompts") or {})
    pnames = {f.name for f in dataclasses.fields(PromptConfig)}
    if set(p) - pnames:
        raise ValueError(f"unknown config key(s) {sorted(set(p) - pnames)} in config.prompts")
    d["prompts"] = PromptConfig(**p)
    return ExperimentConfig(**d)


def run_experiment(cfg: ExperimentConfig, workdir, log: Callable[[str], None] | None = print):
    """Loads the pair and prompts, runs `run`, writes workdir/table.md and results.json."""
    import json
    import os
    from pathlib import Path

    from specjax.bench.theory_experiment import select_prompts
    from specjax.models import loading
    from specjax.models import params as params_lib
    from specjax.models.tokenizer import stop_token_ids

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    tok = loading.load_tokenizer(cfg.target, progress=False)
    items = select_prompts(tok, cfg.prompts, cfg.chat, cfg.max_prompt_tokens, log)
    pair = []
    for name in (cfg.target, cfg.draft):
        mcfg, params = loading.load(name, cfg.dtype, progress=False)
        pair.append(params_lib.place(mcfg, params, cfg.layout))
        del params
    result = run(pair[0], pair[1], [it.ids for it in items], temperatures=cfg.temperatures,
                 ks=cfg.ks, num_tokens=cfg.num_tokens, eos_ids=stop_token_ids(tok),
                 batch_size=cfg.batch_size, seed=cfg.seed, log=log)
    result["prompts"] = [dict(source=it.source, name=it.name, tokens=len(it.ids)) for it in items]
    result["config"] = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    result["seconds"]["total"] = time.perf_counter() - t0
    result["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    table = markdown_table(result)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    result["table"] = table
    return result

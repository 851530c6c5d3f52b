"""RSD-S vs RSD-C at equal target budget (Recursive Speculative Decoding, arXiv:2402.14160).

    python -m experiments.rsd_compare                        # SmolLM2-135M, 3 prompts x 32 tokens
    python -m experiments.rsd_compare --budgets=7,13 --seeds=0,1,2 --temperature=0.7
    python -m experiments.rsd_compare --target=qwen2.5-coder-1.5b --draft=qwen2.5-coder-0.5b

Both methods draft with the same draft model (by default a self-draft: the
target's first layers, `--draft=self:L`) and are verified by recursive
rejection sampling without replacement (`verify.tree_rrs(replacement=False)`),
so both are lossless; at equal node count N (root included, = tokens the
target verifies per call) they differ only in the tree:

  RSD-C  `DraftModel(child_rule="without_replacement")` on a constant-branching
         topology (`trees.template_topology([b1, b2, ...])`): every node at
         depth d gets b_d children, a Gumbel-top-b_d sample of its q;
  RSD-S  `StochasticBeam(W, D)`, N = 1 + W * D: the W best stochastic beams of
         every depth (`specjax.drafters.stochastic_beam`).

The metric is tau, mean tokens per target forward (accepted drafts + the
bonus/correction token; prefill excluded), pooled over prompts and seeds.
Prints a Markdown table; `--out=PATH.json` also writes the rows.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from specjax import decode, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.stochastic_beam import StochasticBeam
from specjax.models.lm import DecoderLM
from specjax.sampling import Sampling

# (budget N) -> [("rsd_s", (W, D)) | ("rsd_c", branching per depth)], all with N nodes
TREES: dict[int, list[tuple[str, tuple[int, ...]]]] = {
    7: [("rsd_s", (2, 3)), ("rsd_c", (2, 2)), ("rsd_c", (2, 1, 1))],
    13: [("rsd_s", (3, 4)), ("rsd_s", (2, 6)), ("rsd_c", (3, 3)), ("rsd_c", (3, 1, 1, 1)),
         ("rsd_c", (2, 1, 1, 1, 1, 1))],
    21: [("rsd_s", (4, 5)), ("rsd_c", (4, 4)), ("rsd_c", (4, 1, 1, 1, 1))],
}

# Spec-Bench question ids (writing, qa, math_reasoning) used as the 3 prompts.
DEFAULT_QUESTIONS = ("81", "321", "401")


def build(kind: str, shape: Sequence[int], draft_lm, budget: int):
    """(drafter, verifier, label) for one tree; ValueError if it does not use `budget` nodes."""
    if kind == "rsd_s":
        w, d = shape
        drafter = StochasticBeam(draft_lm, int(w), int(d))
        label = f"RSD-S W={w} D={d}"
    elif kind == "rsd_c":
        parents = tuple(trees.template_topology(list(shape)).tolist())
        drafter = DraftModel(draft_lm, parents, "without_replacement")
        label = "RSD-C " + "-".join(str(b) for b in shape)
    else:
        raise ValueError(f"unknown tree kind {kind!r}; valid: rsd_s, rsd_c")
    if drafter.num_nodes != budget:
        raise ValueError(f"{label} has {drafter.num_nodes} nodes, not the budget {budget}")
    width = drafter.max_children if kind == "rsd_s" else max(shape)
    return drafter, verify.tree_rrs(replacement=False, max_children=width), label


def compare(target, draft, prompts: Sequence[Sequence[int]], budgets: Sequence[int], *,
            temperature: float = 0.7, max_new_tokens: int = 32, seeds: Sequence[int] = (0,),
            eos_ids: Sequence[int] = ()) -> list[dict]:
    """tau of every tree of `TREES[budget]` (all prompts in one batch, every seed).

    Args:
      target, draft: (ModelConfig, params) of the target and the draft model.
      prompts: token id lists.
      budgets: node counts N (keys of `TREES`).

    Returns:
      One dict per tree: budget, label, tau (pooled over prompts and seeds),
      tau per seed, target calls, steps, seconds (first call includes compile).
    """
    (tcfg, tparams), (dcfg, dparams) = target, draft
    draft_lm = DecoderLM(dcfg)
    sampling = Sampling(temperature=temperature)
    rows = []
    for budget in budgets:
        if budget not in TREES:
            raise ValueError(f"no trees for budget {budget}; known: {sorted(TREES)}")
        for kind, shape in TREES[budget]:
            drafter, verifier, label = build(kind, shape, draft_lm, budget)
            method = decode.Method(drafter=drafter, verifier=verifier)
            hist, per_seed, calls, secs = 0, [], 0, []
            for seed in seeds:
                t0 = time.perf_counter()
                g = decode.speculative_generate(
                    tparams, tcfg, prompts, method=method, draft_params=dparams,
                    max_new_tokens=max_new_tokens, sampling=sampling,
                    key=jax.random.key(seed), eos_ids=eos_ids)
                secs.append(time.perf_counter() - t0)
                h = g.accept_hist.sum(axis=0)
                hist = hist + h
                per_seed.append(decode.tau_of_hist(h))
                calls += int(g.target_calls.sum())
            rows.append(dict(budget=budget, label=label, tau=decode.tau_of_hist(hist),
                             tau_per_seed=per_seed, target_calls=calls,
                             steps=int(np.sum(hist)), seconds=secs))
            print(f"  N={budget:3d} {label:24s} tau={rows[-1]['tau']:.3f} "
                  f"per seed {np.round(per_seed, 2).tolist()} ({sum(secs):.0f} s)", flush=True)
    return rows


def table(rows: Sequence[dict]) -> str:
    out = ["| N | tree | tau (pooled) | tau per seed | steps |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['budget']} | {r['label']} | {r['tau']:.3f} | "
                   f"{', '.join(f'{t:.2f}' for t in r['tau_per_seed'])} | {r['steps']} |")
    return "\n".join(out)


def setup(target: str, draft: str, questions: Sequence[str], layout: str = "auto"):
    """Target and draft (`bench.experiment.load_models`: "self:L" = the target's
    first L layers), the chat-templated Spec-Bench prompts, and the stop ids."""
    from specjax.bench.experiment import load_models
    from specjax.bench.prompts import load_spec_bench
    from specjax.bench.runner import encode_turns
    from specjax.models import loading
    from specjax.models.tokenizer import stop_token_ids

    tok = loading.load_tokenizer(target, progress=False)
    by_id = {p.question_id: p for p in load_spec_bench(max_turns=1)}
    missing = [q for q in questions if q not in by_id]
    if missing:
        raise ValueError(f"unknown Spec-Bench question ids {missing}")
    prompts = [encode_turns(tok, by_id[q], [], chat=True) for q in questions]
    tgt, drf = load_models(target, draft, "float32", layout, progress=False)
    return tgt, drf, prompts, stop_token_ids(tok)


_BUDGETS = flags.DEFINE_list("budgets", ["7", "13"], "Node budgets N (root included).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "PRNG seeds (runs pooled).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "Sampling temperature (> 0).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "New tokens per prompt.")
_TARGET = flags.DEFINE_string("target", "smollm2-135m", "Target model (asset, GGUF or HF dir).")
_DRAFT = flags.DEFINE_string("draft", "self:10", "Draft: a model, or self:L = the target's "
                             "first L layers.")
_QUESTIONS = flags.DEFINE_list("questions", list(DEFAULT_QUESTIONS), "Spec-Bench question ids.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def main(argv):
    del argv
    if _TEMPERATURE.value <= 0:
        raise app.UsageError("RSD compares sampling methods: --temperature must be > 0")
    target, draft, prompts, eos = setup(_TARGET.value, _DRAFT.value, _QUESTIONS.value)
    print(f"target {_TARGET.value}, draft {_DRAFT.value}; "
          f"{len(prompts)} prompts x {_MAX_NEW.value} tokens, T={_TEMPERATURE.value}", flush=True)
    rows = compare(target, draft, prompts, [int(b) for b in _BUDGETS.value],
                   temperature=_TEMPERATURE.value, max_new_tokens=_MAX_NEW.value,
                   seeds=[int(s) for s in _SEEDS.value], eos_ids=eos)
    print(table(rows))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)

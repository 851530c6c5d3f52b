"""Measures a model pair's per-rank acceptance and writes Sequoia tree templates.

    python -m experiments.sequoia_tree --target=smollm2-135m --draft=self:10 \\
        --prompts=spec_bench --num_prompts=4 --num_nodes=16,32,64 --temperature=0 \\
        --out=workdir/sequoia/smollm2_self10.json

Sequoia (Chen et al., arXiv:2402.12374): the target generates a continuation
of each prompt, one teacher-forced forward of each model over every text gives
the per-rank acceptance vector
(`specjax.bench.sequoia_acceptance.measure_acceptance`), and the dynamic
programme (`specjax.trees.sequoia`) picks the best tree per node budget. The
file feeds the `sd_tree` method: `--config.draft.sd_tree.tree=sequoia:PATH@N`.

Flags:
  --target        asset name, GGUF file or HF dir.
  --draft         "self:L" (the target's first L layers) or a model like --target.
  --prompts       "spec_bench", "spec_bench:cat1,cat2" or "humaneval:0,1,2".
  --num_prompts   keep this many prompts, spread evenly over the selection (0 = all).
  --num_nodes     comma-separated draft-node budgets.
  --max_depth     optional depth bound (draft forwards per step).
  --temperature / --top_k / --top_p   the sampling the template is for (0 = greedy).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from specjax import theory
from specjax.bench.sequoia_acceptance import generate_texts, measure_acceptance
from specjax.sampling import Sampling
from specjax.trees import sequoia

_TARGET = flags.DEFINE_string("target", "smollm2-135m", "Target model.")
_DRAFT = flags.DEFINE_string("draft", "self:10", "Draft: self:L or a model.")
_PROMPTS = flags.DEFINE_string("prompts", "spec_bench", "Prompt selection (see docstring).")
_SPEC_BENCH = flags.DEFINE_string("spec_bench_path", "", "question.jsonl (default: the packaged copy).")
_PER_CATEGORY = flags.DEFINE_integer("per_category", 1, "Spec-Bench questions per category.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 4, "Prompts kept (0 = all selected).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens the target generates per prompt.")
_NUM_NODES = flags.DEFINE_string("num_nodes", "16,32,64", "Draft-node budgets.")
_MAX_DEPTH = flags.DEFINE_integer("max_depth", None, "Depth bound of the trees (default none).")
_RANKS = flags.DEFINE_integer("ranks", 16, "Ranks (children per node) measured.")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 4, "Sampling: child draws per position.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sampling top-k (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sampling top-p (1 = off).")
_CHAT = flags.DEFINE_bool("chat", True, "Apply the chat template to Spec-Bench prompts.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Parameter dtype.")
_LAYOUT = flags.DEFINE_string("layout", "auto", "Weight layout (models.params.with_layout).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (text sampling and child draws).")
_OUT = flags.DEFINE_string("out", "", "Output JSON (default workdir/sequoia/<pair>.json).")


def select_prompts(spec: str, path: str, per_category: int, num: int):
    """Benchmark prompts from a --prompts spec, `num` of them spread evenly (0 = all)."""
    from specjax.bench import prompts as prompts_lib

    kind, _, arg = spec.partition(":")
    if kind == "spec_bench":
        cats = [c.strip() for c in arg.split(",") if c.strip()] or None
        items = prompts_lib.load_spec_bench(path or None, cats, per_category, max_turns=1)
    elif kind == "humaneval":
        items = prompts_lib.load_humaneval([int(i) for i in arg.split(",")] if arg else None)
    else:
        raise app.UsageError(f"--prompts must be spec_bench[:cats] or humaneval[:ids], got {spec!r}")
    if num and num < len(items):
        items = [items[int(i)] for i in np.linspace(0, len(items) - 1, num).round()]
    return items


def load_pair(target: str, draft: str, dtype: str, layout: str):
    """((target cfg, params), (draft cfg, params)); "self:L" shares the target's layers."""
    from specjax.bench.experiment import load_models

    try:
        return load_models(target, draft, dtype, layout, progress=False)
    except ValueError as e:
        raise app.UsageError(str(e)) from e


def default_out(target: str, draft: str, sampling: Sampling) -> Path:
    name = f"{Path(target).name}__{Path(draft).name}_T{sampling.temperature:g}"
    return Path("workdir/sequoia") / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".json")


def main(argv):
    del argv
    from specjax.bench.runner import encode_turns
    from specjax.models import loading
    from specjax.models.tokenizer import stop_token_ids

    sampling = Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
    budgets = [int(n) for n in _NUM_NODES.value.split(",") if n.strip()]
    t0 = time.perf_counter()
    items = select_prompts(_PROMPTS.value, _SPEC_BENCH.value, _PER_CATEGORY.value,
                           _NUM_PROMPTS.value)
    (tcfg, tparams), (dcfg, dparams) = load_pair(_TARGET.value, _DRAFT.value, _DTYPE.value,
                                                 _LAYOUT.value)
    tok = loading.load_tokenizer(_TARGET.value, progress=False)
    ids = [encode_turns(tok, p, [], _CHAT.value) for p in items]
    key = jax.random.key(_SEED.value)
    t1 = time.perf_counter()
    texts, starts = generate_texts(tcfg, tparams, ids, max_new_tokens=_MAX_NEW.value,
                                   sampling=sampling, key=jax.random.fold_in(key, 0),
                                   eos_ids=stop_token_ids(tok))
    t2 = time.perf_counter()
    est = measure_acceptance(tcfg, tparams, dcfg, dparams, texts, starts,
                             sampling=sampling, ranks=_RANKS.value,
                             num_draws=_NUM_DRAWS.value, key=jax.random.fold_in(key, 1))
    t3 = time.perf_counter()
    templates = [sequoia.make_template(est, n, target=_TARGET.value, draft=_DRAFT.value,
                                       sampling=sampling, max_depth=_MAX_DEPTH.value)
                 for n in budgets]
    out = sequoia.save_templates(_OUT.value or default_out(_TARGET.value, _DRAFT.value, sampling),
                                 templates)

    print(f"target {_TARGET.value}, draft {_DRAFT.value}, {sampling}")
    print(f"prompts: {[f'{p.category}/{p.question_id}' for p in items]}")
    print(f"{est.positions} scored positions (target-generated tokens)")
    print("rank | acceptance | std. error")
    for k, (a, e) in enumerate(zip(est.acceptance, est.stderr)):
        print(f"{k:4d} | {a:.4f}     | {e:.4f}")
    print(f"sum  | {est.acceptance.sum():.4f}   (P(some child of rank < {_RANKS.value} accepted))")
    print("\n| nodes | used | depth | root children | E[tokens/call] | chain of same size |")
    print("|---|---|---|---|---|---|")
    for t in templates:
        chain = theory.tree_expected_tokens(np.arange(-1, t.num_nodes - 1), t.acceptance)
        root = sum(1 for p in t.parents[1:] if p == 0)
        print(f"| {t.requested_nodes} | {t.num_nodes} | {t.depth} | {root} | "
              f"{t.expected_tokens:.3f} | {chain:.3f} |")
    print(f"\nwrote {out} (use --config.draft.sd_tree.tree=sequoia:{out}@N)")
    print(f"load {t1 - t0:.0f} s, generate {t2 - t1:.0f} s, measure {t3 - t2:.0f} s")


if __name__ == "__main__":
    app.run(main)

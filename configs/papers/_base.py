"""Shared builder of the paper-table configs (`configs/papers/*.py`).

Each paper config is an experiment config (run by `python -m experiments.run`)
with `paper.layout` set, so the run also writes `paper_table.md` in the layout
of the paper's table (`specjax.bench.paper_tables`). Variants, combined with
"+" (e.g. `configs/papers/pearl.py:small+smollm2`):

  ""        the stand-in for the paper's setting: the Qwen2.5-Coder 0.5B -> 1.5B pair
            (or 1.5B alone for model-free methods), the paper's tasks mapped to
            Spec-Bench categories / HumanEval, 10 prompts per category, 128 tokens
  small     1 prompt per category, 2 HumanEval problems, 64 tokens
  tiny      1 prompt, 16 tokens (the tests)
  smollm2   SmolLM2-135M as the target, drafts from its first 10 layers
  t<value>  sampling temperature (e.g. t0.6, t1); greedy runs check token identity
"""

from __future__ import annotations

from ml_collections import ConfigDict

from configs import quickstart
from specjax.bench import prompts

QWEN, QWEN_DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"


def paper_config(arg: str | None, *, layout: str, paper: str, table: str, paper_setting: str,
                 here: str, methods: str, categories: str = "", humaneval: str = "",
                 draft: bool = True, temperature: float = 0.0,
                 draft_args: dict | None = None) -> ConfigDict:
    """An experiment config mirroring one paper table (see the module docstring)."""
    c = quickstart.get_config()
    c.model = QWEN
    c.draft_model = QWEN_DRAFT if draft else ""
    c.methods = methods
    c.max_new_tokens = 128
    c.sampling.temperature = temperature
    c.prompts.spec_bench_categories = categories
    c.prompts.per_category = 10
    c.prompts.humaneval = humaneval
    for k, v in (draft_args or {}).items():
        c.draft[k] = v
    c.paper = ConfigDict(dict(layout=layout, paper=paper, table=table,
                              paper_setting=paper_setting, here=here))
    for v in [v for v in (arg or "").replace(",", "+").split("+") if v]:
        if v == "small":
            c.max_new_tokens = 64
            c.prompts.per_category = 1
            c.prompts.humaneval = ",".join(humaneval.split(",")[:2]) if humaneval else ""
        elif v == "tiny":
            c.max_new_tokens = 16
            c.prompts.per_category = 1
            first = categories.split(",")[0] if categories else ""
            c.prompts.spec_bench_categories = first
            c.prompts.humaneval = "" if first else humaneval.split(",")[0]
        elif v == "smollm2":
            c.model, c.draft_model = "smollm2-135m", ""
        elif v.startswith("t") and _is_float(v[1:]):
            c.sampling.temperature = float(v[1:])
        else:
            raise ValueError(f"unknown variant {v!r}; valid: 'small', 'tiny', 'smollm2', "
                             "'t<temperature>' (combine with '+')")
    return c


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


SPEC_BENCH_TASKS = ",".join(prompts.SPEC_BENCH_TASKS)  # Spec-Bench's 6 tasks
HUMANEVAL_20 = ",".join(str(i) for i in range(0, 100, 5))  # problems 0-99 (tuning split)

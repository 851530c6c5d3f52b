"""Loop overhead (issue 17): what the speculative loop costs beyond its forwards.

    python -m experiments.loop_overhead --config=configs/loop_overhead.py        # SmolLM2
    python -m experiments.loop_overhead --config=configs/loop_overhead.py:qwen   # Qwen pair
    python -m experiments.loop_overhead --config=configs/loop_overhead.py:tiny

(a) nothing drafted (FixedLength(0)) vs the autoregressive loop, with a
model-free drafter and a draft model catching up eagerly and lazily; (b) a
draft-model chain of k drafts: measured step time vs its bare forwards
(`specjax.bench.loop_overhead`); (c) SmartSpec with step costs calibrated on the
loop vs bare forwards: measured vs modelled speedup (`specjax.bench.step_costs`).
HumanEval problems from the tuning split.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.target = "smollm2-135m"
    c.draft = "self:10"
    c.dtype = "float32"
    c.layout = "auto"
    c.chat = False
    c.max_prompt_tokens = 512
    c.max_new_tokens = 128
    c.k = 4
    c.lazy = 16
    c.repeats = 5
    c.smartspec_max_k = 4
    c.smartspec_pending = 4
    c.prompts = ConfigDict(dict(spec_bench_path="", spec_bench_categories="", per_category=0,
                                humaneval="0,10,20,30,40", max_turns=1))
    if arg == "qwen":
        c.target = "qwen2.5-coder-1.5b"
        c.draft = "qwen2.5-coder-0.5b"
        c.max_new_tokens = 96
        c.repeats = 2
        c.prompts.humaneval = "0,10,20"
    elif arg == "tiny":
        c.max_new_tokens = 16
        c.repeats = 1
        c.smartspec_max_k = 2
        c.prompts.humaneval = "0"
    elif arg not in (None, ""):
        raise ValueError(f"unknown loop_overhead variant {arg!r}; valid: '', 'qwen', 'tiny'")
    return c

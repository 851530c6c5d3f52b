"""Issue 2 benchmark: our jitted greedy baseline vs transformers' greedy `generate`.

    python -m experiments.run --config=configs/ar_vs_hf.py:smollm2 --workdir=workdir/ar_smollm2
    python -m experiments.run --config=configs/ar_vs_hf.py:qwen1.5b --workdir=workdir/ar_qwen

Same prompts, same CPU, same run; prompts interleaved per method.
"""

from ml_collections import ConfigDict

from configs import quickstart

MODELS = {"smollm2": "smollm2-135m", "qwen1.5b": "qwen2.5-coder-1.5b",
          "qwen0.5b": "qwen2.5-coder-0.5b"}


def get_config(arg: str | None = None) -> ConfigDict:
    name = arg or "smollm2"
    if name not in MODELS:
        raise ValueError(f"unknown model variant {name!r}; valid: {sorted(MODELS)}")
    c = quickstart.get_config()
    c.model = MODELS[name]
    c.methods = "autoregressive"
    c.peers = "hf_greedy"
    c.max_new_tokens = 128
    c.prompts.spec_bench_categories = "writing,coding,math_reasoning,summarization,qa"
    c.prompts.per_category = 1
    c.prompts.humaneval = "0,10,20,30,40"
    return c

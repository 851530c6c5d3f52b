"""Issue 4: measured vs predicted tokens per target call of chain speculative sampling.

    python -m experiments.chain_prediction --config=configs/chain_prediction.py
    python -m experiments.chain_prediction --config=configs/chain_prediction.py:tiny

Target qwen2.5-coder-1.5b, draft qwen2.5-coder-0.5b; chain SD sampled at each
temperature for each k on HumanEval prompts (tuning split 0-99); the loop's
tokens per target forward vs Leviathan et al.'s Eq. 1 and a per-position
version, both from the exact 1 - TV(p, q) along the generated texts
(`specjax.bench.chain_prediction`).
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.target = "qwen2.5-coder-1.5b"
    c.draft = "qwen2.5-coder-0.5b"
    c.dtype = "float32"
    c.layout = "auto"
    c.chat = True
    c.max_prompt_tokens = 384
    c.temperatures = "0.7,1.0"
    c.ks = "2,4"
    c.num_tokens = 48
    c.batch_size = 4
    c.seed = 0
    c.prompts = ConfigDict(dict(spec_bench_path="", spec_bench_categories="", per_category=1,
                                humaneval="0,10,20,30,40,50,60,70", max_turns=1))
    if arg == "tiny":
        c.temperatures = "1.0"
        c.ks = "2"
        c.num_tokens = 8
        c.prompts.humaneval = "0"
    elif arg not in (None, ""):
        raise ValueError(f"unknown chain_prediction variant {arg!r}; valid: '', 'tiny'")
    return c

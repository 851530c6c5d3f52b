"""Issue 3 benchmark: chain SD on the Qwen2.5-Coder pair (0.5B draft -> 1.5B target), greedy.

    python -m experiments.run --config=configs/sd_pair.py --workdir=workdir/sd_pair
    python -m experiments.run --config=configs/sd_pair.py:tiny ...   # 2 prompts, 32 tokens

HumanEval problems 0-99 (tuning split), 128 new tokens; our autoregressive
baseline, chain SD for several K, a top-k tree, and HF greedy / assisted
generation on the same pair as peers.
"""

from ml_collections import ConfigDict

from configs import quickstart


def get_config(arg: str | None = None) -> ConfigDict:
    c = quickstart.get_config()
    c.model = "qwen2.5-coder-1.5b"
    c.draft_model = "qwen2.5-coder-0.5b"
    c.methods = "autoregressive,sd_chain/k=2,sd_chain/k=3,sd_chain/k=5,sd_tree/tree=2.2.1"
    c.peers = "hf_greedy,hf_assisted"
    c.max_new_tokens = 128
    c.prompts.spec_bench_categories = ""
    c.prompts.humaneval = ",".join(str(i) for i in range(0, 100, 5))  # 20 problems
    if arg == "tiny":
        c.max_new_tokens = 32
        c.prompts.humaneval = "0,5"
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r}; valid: '', 'tiny'")
    return c

"""Issue 3 benchmark: chain SD on the Qwen2.5-Coder pair (0.5B draft -> 1.5B target), greedy.

    python -m experiments.run --config=configs/sd_pair.py --workdir=workdir/sd_pair
    python -m experiments.run --config=configs/sd_pair.py:tiny ...   # 2 prompts, 32 tokens
    python -m experiments.run --config=configs/sd_pair.py:best ...   # the loop-v2 table

`best`: the adaptive-length methods that led the session-5 table against the
k = 4 chain, on the first ten HumanEval problems of 0-99 whose chat prompt pads
to 128 tokens (`BUCKET_128`: one prompt shape, so each method compiles once).

HumanEval problems 0-99 (tuning split), 128 new tokens; our autoregressive
baseline, chain SD for several K, a top-k tree, and HF greedy / assisted
generation on the same pair as peers.
"""

from ml_collections import ConfigDict

from configs import quickstart


# HumanEval 0-99 whose Qwen chat prompt pads to 128 tokens (32-token buckets), the first ten
BUCKET_128 = "0,1,3,4,6,8,19,21,25,30"


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
    elif arg == "best":
        c.methods = ("autoregressive,sd_chain/k=4,sd_confidence/threshold=0.5/widths=1.2.3.5,"
                     "smartspec/widths=1.2.3.5")
        c.prompts.humaneval = BUCKET_128
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r}; valid: '', 'tiny', 'best'")
    return c

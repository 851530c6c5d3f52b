"""Issue 5 benchmark: train-free drafters against our autoregressive baseline and HF PLD.

    python -m experiments.run --config=configs/train_free.py --workdir=workdir/train_free
    python -m experiments.run --config=configs/train_free.py:qwen --workdir=workdir/train_free_qwen
    python -m experiments.run --config=configs/train_free.py:small ...  # 1 per task, 2 HumanEval, 64 tokens

Greedy, 128 new tokens, Spec-Bench's six tasks (10 questions each; MT-bench's
10 spread over its eight categories) and 20 HumanEval problems from 0-99.
Target SmolLM2-135M (drafts for sd_chain / cs_drafting / rasd: its first 10
layers) or, with `:qwen`, Qwen2.5-Coder-1.5B with the 0.5B model as the draft.
Peers in the same run: transformers greedy `generate` and
`prompt_lookup_num_tokens=10` (Spec-Bench's PLD setting). Retrieval needs a
datastore that excludes the benchmark prompts:

    python -m experiments.heldout_corpus --config=configs/train_free.py --out=ds/heldout.jsonl
    python -m specjax.drafters.retrieval build --tokenizer=smollm2-135m \
        --corpus=ds/heldout.jsonl --out=ds/heldout_smollm2.npz
    ... --config.draft.datastore=ds/heldout_smollm2.npz --config.methods=<METHODS>,retrieval,rasd
(Qwen: --tokenizer=qwen2.5-coder-1.5b --vocab-size=151936.)
"""

from ml_collections import ConfigDict

from configs import quickstart
from specjax.bench import prompts

METHODS = ("autoregressive,pld,token_recycling,aded,bigram,max_gram,sd_chain/k=4,cs_drafting,"
           "kangaroo,swift")


def get_config(arg: str | None = None) -> ConfigDict:
    c = quickstart.get_config()
    c.methods = METHODS
    c.peers = "hf_greedy,hf_prompt_lookup"
    c.max_new_tokens = 128
    c.draft.prompt_lookup = 10
    c.draft.tr_template = "tr80"
    c.draft.datastore = ""
    c.prompts.spec_bench_categories = ",".join(prompts.SPEC_BENCH_TASKS)
    c.prompts.per_category = 10
    c.prompts.humaneval = ",".join(str(i) for i in range(0, 100, 5))
    for v in [v for v in (arg or "").split("+") if v]:
        if v == "qwen":
            c.model, c.draft_model = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
        elif v == "small":
            c.max_new_tokens = 64
            c.prompts.per_category = 1
            c.prompts.humaneval = "0,5"
        elif v == "tiny":
            c.max_new_tokens = 16
            c.prompts.spec_bench_categories = "qa"
            c.prompts.per_category = 1
            c.prompts.humaneval = ""
        else:
            raise ValueError(f"unknown variant {v!r}; valid: 'qwen', 'small', 'tiny' "
                             "(combine with '+')")
    return c

"""Issue 5 benchmark: train-free drafters against our autoregressive baseline and HF PLD.

    python -m experiments.run --config=configs/train_free.py --workdir=workdir/train_free
    python -m experiments.run --config=configs/train_free.py:qwen --workdir=workdir/train_free_qwen
    python -m experiments.run --config=configs/train_free.py:small ...  # 1 per task, 2 HumanEval, 64 tokens
    python -m experiments.run --config=configs/train_free.py:b16 ...    # the 2-core CPU's budget, below
    python -m experiments.run --config=configs/train_free.py:qwen+he4 ...

Greedy, 128 new tokens, Spec-Bench's six tasks (10 questions each; MT-bench's
10 spread over its eight categories) and 20 HumanEval problems from 0-99.
Target SmolLM2-135M (drafts for sd_chain / cs_drafting / rasd: its first 10
layers) or, with `:qwen`, Qwen2.5-Coder-1.5B with the 0.5B model as the draft.
Peers in the same run: transformers greedy `generate` and
`prompt_lookup_num_tokens=10` (Spec-Bench's PLD setting). Retrieval needs a
datastore that excludes the benchmark prompts:

    python -m experiments.heldout_corpus --config=configs/train_free.py --out=ds/heldout.jsonl
    python -m experiments.build_datastore --tokenizer=smollm2-135m \
        --corpus=ds/heldout.jsonl --out=ds/heldout_smollm2.npz
    ... --config.draft.datastore=ds/heldout_smollm2.npz --config.methods=<METHODS>,retrieval,rasd
(Qwen: --tokenizer=qwen2.5-coder-1.5b --vocab_size=151936.)

The full set (80 prompts x 128 tokens x ~20 methods) takes many hours on a
2-core CPU, mostly compilation per prompt-length bucket (Qwen: 50-100 s per
method and bucket) and Qwen-1.5B decoding (~2 tokens/s). Two reduced sets fit
about an hour each: `b16` = 2 questions per Spec-Bench task + 4 HumanEval
problems, the first of each task whose chat-templated prompt falls in
SmolLM2's 64- or 800-token compile bucket (B16_SPEC_BENCH, B16_HUMANEVAL);
`he4` = HumanEval 0, 19, 42, 66 (one 128-token bucket for both tokenizers),
64 new tokens, no Spec-Bench.
"""

from ml_collections import ConfigDict

from configs import quickstart
from specjax.bench import prompts

METHODS = ("autoregressive,pld,token_recycling,aded,bigram,max_gram,sd_chain/k=4,cs_drafting,"
           "kangaroo,swift")
# first two questions per task in SmolLM2's 64- and 800-token buckets (mt_bench, translation,
# qa, math_reasoning: 64; summarization, rag: 800), first turn only as in every config here
B16_SPEC_BENCH = "81,85,161,164,321,322,444,449,241,246,483,486"
B16_HUMANEVAL = "14,23,45,53"  # 64-token bucket
HE4_HUMANEVAL = "0,19,42,66"  # 128-token bucket for the SmolLM2 and Qwen tokenizers


def get_config(arg: str | None = None) -> ConfigDict:
    c = quickstart.get_config()
    c.methods = METHODS
    c.peers = "hf_greedy,hf_prompt_lookup"
    c.max_new_tokens = 128
    c.draft.prompt_lookup = 10
    c.draft.token_recycling.template = "tr80"
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
        elif v == "b16":
            c.prompts.spec_bench_categories = ""
            c.prompts.spec_bench_ids = B16_SPEC_BENCH
            c.prompts.humaneval = B16_HUMANEVAL
        elif v == "he4":
            c.max_new_tokens = 64
            c.prompts.spec_bench_categories = ""
            c.prompts.humaneval = HE4_HUMANEVAL
        elif v == "tiny":
            c.max_new_tokens = 16
            c.prompts.spec_bench_categories = "qa"
            c.prompts.per_category = 1
            c.prompts.humaneval = ""
        else:
            raise ValueError(f"unknown variant {v!r}; valid: 'qwen', 'small', 'tiny', 'b16', 'he4' "
                             "(combine with '+')")
    return c

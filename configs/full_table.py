"""Issue 7 benchmark: every registered method, greedy, with the HF peers in the same run.

    python -m experiments.run --config=configs/full_table.py --workdir=workdir/full_smollm2
    python -m experiments.run --config=configs/full_table.py:qwen --workdir=workdir/full_qwen
    python -m experiments.run --config=configs/full_table.py:small ...  # 1 per task, 2 HumanEval, 64 tokens

The prompts, tokens and variants of `configs/train_free.py` (Spec-Bench's six
tasks x 10 + 20 HumanEval, 128 tokens); the methods are all of the registry:
draft-model SD (chain, top-k tree, DySpec, RSD-S, PEARL, the length policies),
the model-free drafters and self-speculation. Drafts come from the 0.5B model
with `:qwen` and from SmolLM2's first 10 layers otherwise. Add
`retrieval,rasd` with a held-out datastore (see configs/train_free.py) and
`sequoia` with `--config.draft.sequoia_tree=PATH@16`. Peers: transformers
greedy, prompt lookup and (with a draft model) assisted generation.
"""

from ml_collections import ConfigDict

from configs import train_free

DRAFT_MODEL_METHODS = ("sd_chain/k=4,sd_tree/tree=2.2.1,dyspec,rsd_s,pearl,"
                       "sd_schedule/widths=1.2.3.5,sd_confidence/widths=1.2.3.5,"
                       "specdecpp/widths=1.2.3.5,smartspec/widths=1.2.3.5,cs_drafting")
MODEL_FREE = "pld,token_recycling,aded,bigram,max_gram,kangaroo,swift"


def get_config(arg: str | None = None) -> ConfigDict:
    c = train_free.get_config(arg)
    c.methods = f"autoregressive,{DRAFT_MODEL_METHODS},{MODEL_FREE}"
    c.draft.sequoia_tree = ""
    c.peers = "hf_greedy,hf_prompt_lookup" + (",hf_assisted" if c.draft_model else "")
    return c

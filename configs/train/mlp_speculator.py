"""Trains the MLP speculator (arXiv:2404.19124) on a target's hidden states.

    python -m experiments.train --config=configs/train/mlp_speculator.py:smollm2 \
        --workdir=workdir/train/mlp_smollm2
    python -m experiments.train --config=configs/train/mlp_speculator.py:tiny ...   # minutes

Corpus: the Python standard library's sources (code; never Spec-Bench or
HumanEval text: `training.corpus.EvalGuard`), packed into 256-token records.
The head is saved as `<cache>/heads/<head_name>` with its target's identity.
"""

import dataclasses

from ml_collections import ConfigDict

from specjax.training.experiment import HeadConfig


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.target = "smollm2-135m"
    c.head_name = "mlp-speculator-smollm2-135m"
    c.dtype = "float32"
    c.batch_size = 8
    c.teacher_batch = 4
    c.validation_records = 64
    c.corpus = ConfigDict(dict(sources="stdlib", seq_len=256, max_tokens=1_000_000,
                               val_percent=2.0, name=""))
    # 3 stages; the heads score the 8192 most frequent tokens of the corpus (FR-Spec);
    # kind="medusa" trains Medusa heads (n_predict heads, own_head: their own LM heads)
    # every HeadConfig field is here, so --config.head.<field>=... overrides any of them
    c.head = ConfigDict({**dataclasses.asdict(HeadConfig()), "kind": "mlp_speculator",
                         "n_predict": 3, "draft_vocab": 8192})
    c.train = ConfigDict(dict(steps=800, learning_rate=1e-3, warmup_steps=100, min_lr_ratio=0.1,
                              weight_decay=0.0, b1=0.9, b2=0.95, clip_norm=1.0, log_every=20,
                              eval_every=200, save_every=200, keep=2, seed=0))
    # the paper's second stage on the target's own generations (steps > 0 enables it):
    # --config.stage2.steps=300 (1024 prompts of 64 tokens, 192 sampled tokens, top-k 10)
    c.stage2 = ConfigDict(dict(steps=0, prompts=1024, val_prompts=32, prompt_len=64,
                               new_tokens=192, temperature=1.0, top_k=10, learning_rate=0.0,
                               batch=16))
    if arg in (None, "", "smollm2"):
        pass
    elif arg == "qwen":  # the Qwen pair's 1.5B target: a smaller budget (slower teacher)
        c.target = "qwen2.5-coder-1.5b"
        c.head_name = "mlp-speculator-qwen2.5-coder-1.5b"
        c.corpus.max_tokens = 250_000
        c.head.draft_vocab = 16384
        c.train.steps = 1500
    elif arg == "tiny":  # a smoke run on SmolLM2: minutes
        c.head_name = "mlp-speculator-smollm2-135m-tiny"
        c.corpus.sources = "stdlib:40"
        c.corpus.max_tokens = 20_000
        c.corpus.seq_len = 128
        c.train.steps = 40
        c.train.eval_every = 20
        c.train.save_every = 20
    else:
        raise ValueError(f"unknown variant {arg!r}; valid: 'smollm2', 'qwen', 'tiny'")
    return c

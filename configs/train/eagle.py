"""Trains an EAGLE feature drafter (arXiv:2401.15077) on a target's hidden states.

    python -m experiments.train --config=configs/train/eagle.py:smollm2 \
        --workdir=workdir/train/eagle_smollm2
    python -m experiments.train --config=configs/train/eagle.py:tiny ...   # minutes

Same corpus, split and teacher pass as `configs/train/mlp_speculator.py` (the
cached teacher outputs are shared); one decoder layer of the target's shape,
the target's embedding and LM head frozen (8192 most frequent tokens drafted,
FR-Spec), EAGLE's loss (SmoothL1 features + 0.1 x soft cross-entropy) and
feature noise. Draft with `eagle/head=NAME` (static tree) or `eagle2/head=NAME`.
"""

from ml_collections import ConfigDict

from configs.train import mlp_speculator


def get_config(arg: str | None = None) -> ConfigDict:
    c = mlp_speculator.get_config(arg)
    c.head_name = c.head_name.replace("mlp-speculator", "eagle")
    c.head.kind = "eagle"
    c.train.learning_rate = 5e-4
    if arg == "qwen":  # ~12 s per step on the 2-core CPU (one 1.5B-shaped layer, 16k vocab)
        c.train.steps = 600
    return c

"""Optimal multi-draft acceptance (Hu et al.): verifiers vs the optimum, per draft count.

    python -m experiments.theory_optimal --config=configs/papers/optimal_multidraft.py \
        --workdir=workdir/papers/optimal_multidraft

Hu et al., "Towards Optimal Multi-draft Speculative Decoding"
(arXiv:2502.18779), Sec. 6: the exact acceptance rate of RRS with and
without replacement, K-SEQ (SpecTr) and greedy drafts against the optimum of
each draft law, for n = 2, 3, 4 drafts at temperatures 0.7 and 1.0, on the
Qwen2.5-Coder 0.5B -> 1.5B pair (the paper: Llama / Vicuna / OPT pairs and
its own GPUs). This is the theory experiment's config
(`configs/theory_optimal.py`); its table.md is already the paper's layout
(rows: verifiers and optima; columns: number of drafts; one block per
temperature).
"""

from configs import theory_optimal


def get_config(arg: str | None = None):
    return theory_optimal.get_config(arg)

"""Recursive Speculative Decoding (sampling without replacement), block-efficiency layout.

    python -m experiments.run --config=configs/papers/rsd.py --workdir=workdir/papers/rsd

Jeon, Gagrani, Goel, Park, Lee & Lott, "Recursive Speculative Decoding:
Accelerating LLM Inference via Sampling Without Replacement"
(arXiv:2402.14160). SD (a chain), SpecTr (K-SEQ on i.i.d. drafts), RSD-C
(constant branching, drafts without replacement, recursive rejection sampling)
and RSD-S (stochastic beam search) at similar tree sizes. The paper's MBSU
(memory-bound speed-up) models the step cost from parameter counts; here the
step cost is measured, so "MBSU" = tau / measured step cost.
"""

from configs.papers._base import HUMANEVAL_20, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="block_efficiency", temperature=1.0,
        paper="Jeon et al., Recursive Speculative Decoding: Accelerating LLM Inference via "
              "Sampling Without Replacement (arXiv:2402.14160)",
        table="the block efficiency / MBSU / token rate tables (rows: methods at a target "
              "budget)",
        paper_setting="Llama 2 and OPT target/draft pairs on GPUs (WMT, XSum, Dolly)",
        here="Spec-Bench translation and summarization, HumanEval; trees of 13-15 nodes",
        methods="autoregressive,sd_chain/k=4,sd_tree/tree=3.1.1.1/tree_verifier=kseq,"
                "sd_tree/tree=2.2.2,rsd_s/beam_width=3/depth=4",
        categories="translation,summarization", humaneval=HUMANEVAL_20)

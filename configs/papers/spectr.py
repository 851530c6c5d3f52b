"""SpecTr (optimal-transport multi-draft verification), block-efficiency layout.

    python -m experiments.run --config=configs/papers/spectr.py --workdir=workdir/papers/spectr

Sun, Suresh, Ro, Beirami, Jain & Yu, "SpecTr: Fast Speculative Decoding via
Optimal Transport" (NeurIPS 2023, arXiv:2310.15141). K i.i.d. draft chains of
length L (tree K.1.1.1) verified with K-SEQ (`verify.tree_kseq`) against
speculative decoding (K = 1) and SpecInfer's multi-round rejection sampling
(`tree_verifier=rrs`) on the same drafts. Sampling at temperature 1 (K-SEQ
and greedy verification coincide at temperature 0).
"""

from configs.papers._base import HUMANEVAL_20, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="block_efficiency", temperature=1.0,
        paper="Sun et al., SpecTr: Fast Speculative Decoding via Optimal Transport "
              "(arXiv:2310.15141)",
        table="the block efficiency / speedup tables (rows: K drafts x length L)",
        paper_setting="LM1B and PaLM 2 target/draft pairs on TPUs",
        here="HumanEval and Spec-Bench qa; K = 2, 4 drafts of length L = 4",
        methods="autoregressive,sd_chain/k=4,sd_tree/tree=2.1.1.1/tree_verifier=kseq,"
                "sd_tree/tree=4.1.1.1/tree_verifier=kseq,sd_tree/tree=4.1.1.1/tree_verifier=rrs",
        categories="qa", humaneval=HUMANEVAL_20)

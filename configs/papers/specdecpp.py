"""SpecDec++ (adaptive candidate length), gain over the best fixed K.

    python -m experiments.run --config=configs/papers/specdecpp.py --workdir=workdir/papers/specdecpp

Huang, Guo & Wang, "SpecDec++: Boosting Speculative Decoding via Adaptive
Candidate Lengths" (arXiv:2405.19715). Fixed K = 2, 4, 6 against the
SpecDec++ stopping rule at thresholds 0.3 and 0.5; the acceptance estimate is
the draft's own probabilities until the trained head exists (training
issue). Verified at widths 1, 2, 3, 5 or 9 (`decode.Method.widths`).
"""

from configs.papers._base import HUMANEVAL_20, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="best_fixed_k",
        paper="Huang, Guo & Wang, SpecDec++: Boosting Speculative Decoding via Adaptive "
              "Candidate Lengths (arXiv:2405.19715)",
        table="the main table (per dataset: best fixed K vs SpecDec++, accepted length, "
              "speedup, improvement)",
        paper_setting="llama-2-chat 7B draft -> 70B target on A100s; Alpaca, HumanEval, GSM8K",
        here="Spec-Bench writing and math_reasoning stand in for Alpaca and GSM8K; the "
             "acceptance estimate is the draft's probabilities, not the trained head",
        methods="autoregressive,sd_chain/k=2,sd_chain/k=4,sd_chain/k=6,"
                "specdecpp/threshold=0.3/widths=1.2.3.5,specdecpp/threshold=0.5/widths=1.2.3.5",
        categories="writing,math_reasoning", humaneval=HUMANEVAL_20)

"""Standard speculative decoding, Leviathan et al. Table 3 layout.

    python -m experiments.run --config=configs/papers/leviathan_sd.py --workdir=workdir/papers/leviathan
    python -m experiments.run --config=configs/papers/leviathan_sd.py:t1 ...   # temperature 1

Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative
Decoding" (ICML 2023, arXiv:2211.17192); the same algorithm is Chen et al.,
"Accelerating Large Language Model Decoding with Speculative Sampling"
(arXiv:2302.01318). Chains of gamma = 3, 5, 7 drafts.
"""

from configs.papers._base import HUMANEVAL_20, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="leviathan",
        paper="Leviathan, Kalman & Matias, Fast Inference from Transformers via Speculative "
              "Decoding (arXiv:2211.17192)",
        table="Table 3 (rows: task x draft model x temperature; columns gamma, alpha, speed)",
        paper_setting="T5-XXL (11B) target, T5-small/base/large drafts, WMT En-De and CNN/DM, "
                      "a TPU-v4",
        here="Spec-Bench translation and summarization stand in for WMT En-De and CNN/DM, "
             "plus HumanEval; alpha is inferred from tau with the paper's Eq. 1",
        methods="autoregressive,sd_chain/k=3,sd_chain/k=5,sd_chain/k=7",
        categories="translation,summarization", humaneval=HUMANEVAL_20)

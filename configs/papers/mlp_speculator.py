"""The MLP speculator (combined token/embedding speculator): tau and speedup per stage count.

    python -m experiments.run --config=configs/papers/mlp_speculator.py:smollm2 \
        --workdir=workdir/papers/mlp_speculator

Wertheimer et al., "Accelerating Production LLMs with Combined Token/Embedding
Speculators" (arXiv:2404.19124): speedup and tokens per step as the number of
speculated tokens grows (the paper's n_predict ablation). Here one trained
head (`configs/train/mlp_speculator.py`, head `mlp-speculator-<target>`)
drafts with its first 1, 2 and 3 stages (top-k 5 / 4 / 3, the 5 best
candidate sequences merged into a tree), and with a top-1 chain of all
stages, whose tau `experiments.head_report` compares with the prediction
from the held-out per-stage accuracies. HumanEval 0-99 (every fifth) and
Spec-Bench's six tasks.
"""

from configs.papers._base import HUMANEVAL_20, SPEC_BENCH_TASKS, paper_config

STAGES = ("mlp_speculator/top_k=5/num_candidates=5,mlp_speculator/top_k=5.4/num_candidates=5,"
          "mlp_speculator/top_k=5.4.3/num_candidates=5,"
          "mlp_speculator/top_k=1.1.1/num_candidates=1")


def get_config(arg: str | None = None):
    c = paper_config(
        arg, layout="block_efficiency", draft=False,
        paper="Wertheimer et al., Accelerating Production LLMs with Combined Token/Embedding "
              "Speculators (arXiv:2404.19124)",
        table="the n_predict ablation (tokens per step and speedup vs speculated tokens)",
        paper_setting="Llama2-7B/13B, Codellama-13B, Granite-20B on A100/H100, production "
                      "traffic",
        here="one head trained on 1M tokens of Python stdlib code drafts with its first 1-3 "
             "stages; HumanEval and Spec-Bench prompts, greedy",
        methods=f"autoregressive,{STAGES}", categories=SPEC_BENCH_TASKS, humaneval=HUMANEVAL_20)
    c.draft.mlp_speculator = dict(head=f"mlp-speculator-{c.model}")
    return c

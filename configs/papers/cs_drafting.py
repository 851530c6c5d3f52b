"""CS Drafting (cascade speculative drafting), speedup per task layout.

    python -m experiments.run --config=configs/papers/cs_drafting.py --workdir=workdir/papers/csd

Chen, Yang, Lin, Sun, Chang & Huang, "Cascade Speculative Drafting for Even
Faster LLM Inference" (arXiv:2312.11462). Autoregressive, speculative
decoding with the draft model, the statistical bottom drafter alone, and the
vertical + horizontal cascade (`cs_drafting`). Spec-Bench math_reasoning
(GSM8K questions) and qa stand in for the paper's GSM8K and MMLU.
"""

from configs.papers._base import paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="speedup_by_task",
        paper="Chen et al., Cascade Speculative Drafting for Even Faster LLM Inference "
              "(arXiv:2312.11462)",
        table="the speedup tables (rows: methods; columns: GSM8K, MMLU)",
        paper_setting="FLAN-T5-XXL with FLAN-T5-small/base drafts and LLaMA-2 pairs, GPUs",
        here="Spec-Bench math_reasoning and qa stand in for GSM8K and MMLU",
        methods="autoregressive,sd_chain/k=4,max_gram,cs_drafting,cs_drafting/bottom=bigram",
        categories="math_reasoning,qa")

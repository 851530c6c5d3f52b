"""DySpec (dynamic token trees), block-efficiency layout, temperature 0 or 0.6.

    python -m experiments.run --config=configs/papers/dyspec.py --workdir=workdir/papers/dyspec
    python -m experiments.run --config=configs/papers/dyspec.py:t0.6 ...

Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic Token Tree
Structure" (arXiv:2410.11744). A static top-k tree (SpecInfer-style,
branching 2.2.1) and, given a template (`python -m experiments.sequoia_tree`;
add `sequoia` to methods and `--config.draft.sequoia_tree=PATH@16`), a
Sequoia tree, against DySpec's greedy expansion at 16 nodes.
"""

from configs.papers._base import paper_config


def get_config(arg: str | None = None):
    c = paper_config(
        arg, layout="block_efficiency",
        paper="Xiong et al., DySpec: Faster Speculative Decoding with Dynamic Token Tree "
              "Structure (arXiv:2410.11744)",
        table="the main tables (rows: Sequoia / SpecInfer / DySpec; columns: tokens per "
              "step, latency, speedup)",
        paper_setting="Llama 2 70B target with 7B draft (and smaller pairs) on A100s; C4, "
                      "OpenWebText, CNN/DM",
        here="Spec-Bench qa, writing and summarization stand in for C4, OpenWebText, CNN/DM",
        methods="autoregressive,sd_tree/tree=2.2.1,sd_tree/tree=4.2.1.1,dyspec",
        categories="qa,writing,summarization")
    c.draft.sequoia_tree = ""
    return c

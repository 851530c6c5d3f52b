"""Trained heads at one node budget: Medusa, Hydra, EAGLE-1's static tree, EAGLE-2's dynamic tree.

    python -m experiments.run --config=configs/papers/medusa_eagle.py:smollm2 \
        --workdir=workdir/papers/medusa_eagle

Cai et al., "Medusa" (arXiv:2401.10774), Ankner et al., "Hydra" (arXiv:2402.05109),
Li et al., "EAGLE" (arXiv:2401.15077)
and "EAGLE-2" (arXiv:2406.16858) report tau and speedup per head family on
Spec-Bench (EAGLE-2's Table 1 layout: speedup and tau per method). Here the
four draft 29-node trees from heads trained on the same corpus
(`configs/train/*.py`: heads `medusa-<target>`, `hydra-<target>`,
`eagle-<target>`), and Medusa also at depth 1 and 2 (its head-count ablation).
The papers' direction to check: EAGLE above Hydra above Medusa at the same
budget, EAGLE-2's dynamic tree above EAGLE-1's static one.
"""

from configs.papers._base import HUMANEVAL_20, SPEC_BENCH_TASKS, paper_config

METHODS = ("medusa/template=4/k=4,medusa/template=4.2/k=4,medusa/template=4.2.1.1/k=4,"
           "hydra/template=4.2.1.1/k=4,eagle/template=4.2.1.1/k=4,"
           "eagle2/depth=5/top_k=4/num_nodes=29")


def get_config(arg: str | None = None):
    c = paper_config(
        arg, layout="block_efficiency", draft=False,
        paper="Cai et al., Medusa (arXiv:2401.10774); Ankner et al., Hydra (arXiv:2402.05109); "
              "Li et al., EAGLE (arXiv:2401.15077) and EAGLE-2 (arXiv:2406.16858)",
        table="EAGLE-2 Table 1 layout: tau and speedup per head family (Spec-Bench)",
        paper_setting="Vicuna-7B/13B, LLaMA2-Chat on one A100; ShareGPT-trained heads",
        here="heads trained on 1M tokens of Python stdlib code; 29-node trees; HumanEval and "
             "Spec-Bench prompts, greedy",
        methods=f"autoregressive,{METHODS}", categories=SPEC_BENCH_TASKS, humaneval=HUMANEVAL_20)
    c.draft.medusa = dict(head=f"medusa-{c.model}")
    c.draft.hydra = dict(head=f"hydra-{c.model}")
    c.draft.eagle = dict(head=f"eagle-{c.model}")
    c.draft.eagle2 = dict(head=f"eagle-{c.model}")
    return c

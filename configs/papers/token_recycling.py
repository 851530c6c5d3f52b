"""Token Recycling in Spec-Bench's layout (speedup per task, mean accepted tokens).

    python -m experiments.run --config=configs/papers/token_recycling.py --workdir=workdir/papers/tr
    python -m experiments.run --config=configs/papers/token_recycling.py:smollm2 ...

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large
Language Models with Token Recycling" (arXiv:2408.08696), Table 1, which
uses Spec-Bench (Xia et al., arXiv:2401.07851). Model-free methods on the
target alone: prompt lookup (PLD), ADED (standing in for Lookahead, which is
not implemented) and Token Recycling. REST needs a datastore: add
`retrieval` to methods and `--config.draft.datastore=PATH`.
"""

from configs.papers._base import SPEC_BENCH_TASKS, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="speedup_by_task", draft=False,
        paper="Luo et al., Turning Trash into Treasure: Accelerating Inference of Large "
              "Language Models with Token Recycling (arXiv:2408.08696)",
        table="Table 1 (Spec-Bench: speedup per task, mean accepted tokens, overall)",
        paper_setting="Vicuna 7B/13B/33B on one A100, Spec-Bench (480 questions)",
        here="model-free drafting; ADED stands in for Lookahead; 10 prompts per task",
        methods="autoregressive,pld,aded,token_recycling", categories=SPEC_BENCH_TASKS,
        draft_args=dict(token_recycling=dict(template="tr80")))

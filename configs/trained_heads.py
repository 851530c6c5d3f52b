"""Issue 18 benchmark: trained heads against our autoregressive decoding, prompt lookup,
Token Recycling and the self-draft chain, greedy, in one run (outputs identical).

    python -m experiments.run --config=configs/trained_heads.py --workdir=workdir/heads_smollm2
    python -m experiments.run --config=configs/trained_heads.py:code ...   # HumanEval only
    python -m experiments.run --config=configs/trained_heads.py:qwen ...   # the 1.5B target
    python -m experiments.run --config=configs/trained_heads.py:directions ...  # the papers'

Prompts: Spec-Bench's `b16` questions (two per task in two compile buckets) and
20 HumanEval problems from 0-99 (every fifth), 128 new tokens. The heads are the
ones `configs/train/*.py` train (`python -m experiments.train`), found by name
in `<cache>/heads/`; none of them saw Spec-Bench or HumanEval text. Node budgets:
EAGLE-1's static tree (4, 2, 1, 1) and EAGLE-2's dynamic tree have 29 nodes
each, so the two trees compare at the same verification width.

`directions`: the papers' orderings on HumanEval 0-90 (every tenth), one run:
Medusa, Hydra, EAGLE-1 (static) and EAGLE-2 (dynamic) at the same 21-node budget
(template 4.2.1), the MLP speculator's stage 2 against its stage-1 head, and small
trees for speed (the MLP chain, EAGLE-2 with 8 nodes), and what the truncated draft
vocabulary gives (FR-Spec: the same EAGLE head drafting over all 49152 tokens). Needs
the heads
`configs/train/*.py` train: `mlp-speculator-<target>` with `--config.stage2.steps=300`
(keeps `-stage1`), `medusa-<target>` (`--config.head.kind=medusa`), `hydra-<target>`
(`--config.head.kind=hydra`) and `eagle-<target>`.
"""

from ml_collections import ConfigDict

from configs import train_free


def get_config(arg: str | None = None) -> ConfigDict:
    variants = [v for v in (arg or "").split("+") if v]
    unknown = set(variants) - {"qwen", "code", "small", "directions"}
    if unknown:
        raise ValueError(f"unknown variant {sorted(unknown)}; valid: 'qwen', 'code', 'small', "
                         "'directions' (combine with '+')")
    c = train_free.get_config("+".join(v for v in variants if v in ("qwen",)) + "+b16")
    target = "qwen2.5-coder-1.5b" if "qwen" in variants else "smollm2-135m"
    c.methods = "autoregressive,pld,token_recycling,sd_chain/k=4,mlp_speculator,eagle,eagle2"
    c.peers = ""
    c.prompts.humaneval = ",".join(str(i) for i in range(0, 100, 5))
    c.draft.mlp_speculator = dict(head=f"mlp-speculator-{target}")
    c.draft.medusa = dict(head=f"medusa-{target}")
    c.draft.eagle = dict(head=f"eagle-{target}", template="4.2.1.1")
    c.draft.eagle2 = dict(head=f"eagle-{target}", depth=5, top_k=4, num_nodes=29)
    c.draft.hydra = dict(head=f"hydra-{target}")
    if "directions" in variants:
        c.methods = ",".join([
            "autoregressive", "pld", "token_recycling", "mlp_speculator/top_k=1.1.1/num_candidates=1",
            "mlp_speculator", f"mlp_speculator/head=mlp-speculator-{target}-stage1",
            "medusa/template=4.2.1", "hydra/template=4.2.1", "eagle/template=4.2.1",
            "eagle2/depth=4/top_k=4/num_nodes=21", "eagle2/depth=4/top_k=2/num_nodes=8",
            "eagle2/depth=4/top_k=2/num_nodes=8/full_vocab=1"])
        c.prompts.spec_bench_ids = ""
        c.prompts.humaneval = ",".join(str(i) for i in range(0, 100, 10))
    if "code" in variants:
        c.prompts.spec_bench_ids = ""
    if "small" in variants:
        c.max_new_tokens = 64
        c.prompts.spec_bench_ids = "81,161"
        c.prompts.humaneval = "0,5"
    return c

"""Quick start: SmolLM2-135M, autoregressive vs model-free speculative methods, greedy.

    python -m experiments.run --config=configs/quickstart.py
    python -m experiments.run --config=configs/quickstart.py:tiny   # 2 prompts, 16 tokens

No second model is needed: prompt lookup and Token Recycling draft without a
model. `sd_chain` (add it to `methods`) drafts with the target's own first
`draft.self_layers` layers, an early exit without a trained adapter (weak
on SmolLM2: tau ~1.05 with 8-10 of 30 layers).
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.model = "smollm2-135m"
    c.draft_model = ""  # asset name / path of a separate draft model; "" = self_layers
    c.dtype = "auto"  # float32 on CPU, bfloat16 on GPU / TPU; or "float32" / "bfloat16"
    c.layout = "auto"  # weight layout: auto = measured on this CPU (models.layout)
    c.mesh = ""  # device mesh, e.g. "data:2,model:4" (sharding.parse_mesh); "" = one device
    c.methods = "autoregressive,pld,token_recycling"
    c.peers = ""  # e.g. "hf_greedy,hf_assisted,hf_prompt_lookup" (needs the peers extra)
    c.max_new_tokens = 64
    c.chat = True
    c.seed = 0
    c.sampling = ConfigDict(dict(temperature=0.0, top_k=0, top_p=1.0))
    # method settings (`python -m experiments.run --list`): a top-level key applies to every
    # method with that field, a section config.draft.METHOD to one method
    c.draft = ConfigDict(dict(
        self_layers=10,  # no draft_model: draft with the target's first 10 layers
        prompt_lookup=3,  # the hf_prompt_lookup peer's prompt_lookup_num_tokens
        policy="none",  # e.g. "confidence:threshold=0.5" (specjax.policies)
        sd_chain=dict(k=4),
        sd_tree=dict(tree="3.2.1.1"),
        pearl=dict(gamma=4),  # "auto": the measured target/draft forward-time ratio
        pld=dict(num_drafts=10),
        token_recycling=dict(template="4.2.1"),
    ))
    c.prompts = ConfigDict(dict(
        spec_bench_path="",  # "" = the packaged copy (specjax/bench/data/spec_bench)
        spec_bench_categories="writing,coding,math_reasoning,summarization",
        per_category=1,
        spec_bench_ids="",  # explicit question_ids instead of categories, e.g. "81,161"
        humaneval="0,1",  # problem indices, "" for none
        max_turns=1,
    ))
    if arg == "tiny":
        c.max_new_tokens = 16
        c.prompts.spec_bench_categories = "coding"
        c.prompts.humaneval = "0"
    elif arg not in (None, ""):
        raise ValueError(f"unknown quickstart variant {arg!r}; valid: '', 'tiny'")
    return c

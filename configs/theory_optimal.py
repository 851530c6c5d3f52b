"""Multi-draft verifiers vs the optimum on real Qwen2.5-Coder distributions (issue 4, item 4).

    python -m experiments.theory_optimal --config=configs/theory_optimal.py
    python -m experiments.theory_optimal --config=configs/theory_optimal.py:tiny --workdir=/tmp/t

Target qwen2.5-coder-1.5b, draft qwen2.5-coder-0.5b (same tokenizer). Per
prompt: the target's greedy continuation of `settings.num_positions` tokens,
then both models' next-token laws at those positions, at each temperature,
through `specjax.theory.compare_verifiers` (Hu et al., arXiv:2502.18779,
Sec. 6). The library is `specjax.bench.theory_experiment`.

Default: 10 Spec-Bench questions (2 from each of 5 categories with short
prompts; summarization / rag prompts are 500-1500 tokens and are left out for
CPU time) + 10 HumanEval problems from the tuning split 0-99, 40 positions
each, temperatures 0.7 and 1.0, 2-4 drafts. ~20 min on 2 shared CPU cores.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.target = "qwen2.5-coder-1.5b"
    c.draft = "qwen2.5-coder-0.5b"
    c.dtype = "float32"
    c.chat = True
    c.max_prompt_tokens = 384
    c.cache_logits = True  # workdir/logits.npz (~1 GB): re-analysis without running the models
    c.settings = ConfigDict(dict(
        temperatures="0.7,1.0",
        num_drafts="2,3,4",
        num_positions=40,
        # Tokens with p and q < min_prob are dropped per position (dropped mass and a
        # full-vocabulary recomputation of validate_rows rows are reported); 0 = exact.
        min_prob=1e-8,
        validate_rows=4,
        # RRS without replacement, n >= 3: certified bounds (64: ~2x slower, barely tighter)
        max_histories=16,
        generate_batch=10,  # 2 batches: the 1.5B decode loop compiles once per batch shape
        length_bucket=64,
    ))
    c.prompts = ConfigDict(dict(
        spec_bench_path="",  # "" = the packaged copy (specjax/bench/data/spec_bench)
        spec_bench_categories="writing,coding,math_reasoning,qa,translation",
        per_category=2,
        humaneval="0,10,20,30,40,50,60,70,80,90",  # tuning split only (0-99)
        max_turns=1,
    ))
    if arg == "tiny":
        c.settings.num_positions = 6
        c.settings.num_drafts = "2,3"
        c.settings.validate_rows = 2
        c.prompts.spec_bench_categories = "coding"
        c.prompts.per_category = 1
        c.prompts.humaneval = "0"
    elif arg not in (None, ""):
        raise ValueError(f"unknown theory_optimal variant {arg!r}; valid: '', 'tiny'")
    return c

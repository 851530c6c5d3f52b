"""SmartSpec vs fixed K vs no speculation: throughput at batch sizes 1, 4, 16, 32.

    python -m experiments.batch_throughput --config=configs/batch_throughput.py \
        --workdir=workdir/batch_throughput
    ...:small     # Qwen pair, batches 1, 4, 16, 32 new tokens, 2 repeats
    ...:smollm2   # SmolLM2-135M drafting with its own first 10 layers
    ...:tiny      # tiny random model, toy prompts (tests)

Liu et al., "Optimizing Speculative Decoding for Serving Large Language Models
Using Goodput" (arXiv:2406.14066). Draft Qwen2.5-Coder-0.5B -> target 1.5B,
greedy (--config.sampling.temperature=0.7 for the sampled variant). Methods:
autoregressive, chains of K = 1, 2, 4 drafts, and SmartSpec (goodput-optimal
K <= 4, one K per step for the whole batch, step costs measured at each batch
size; verified at widths 1..5 so every K runs at its own width). Prompts: 16
HumanEval problems and 16 short Spec-Bench questions (2 per category),
interleaved, so every batch mixes code and chat. Batch B takes the first B.
"""

from ml_collections import ConfigDict

SMARTSPEC = "smartspec/max_k=4/widths=1.2.3.4"


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.model = "qwen2.5-coder-1.5b"
    c.draft_model = "qwen2.5-coder-0.5b"  # "" = the target's first draft.self_layers layers
    c.dtype = "float32"
    c.layout = "auto"
    c.methods = ",".join(["autoregressive", "sd_chain/k=1", "sd_chain/k=2", "sd_chain/k=4",
                          SMARTSPEC])
    c.batch_sizes = "1,4,16,32"
    c.max_new_tokens = 64
    c.repeats = 3
    c.chat = True
    c.seed = 0
    c.cost_context = 0  # 0 = median prompt length + max_new_tokens / 2
    c.toy_prompts = 0  # > 0: built-in toy prompts instead (tiny model)
    c.sampling = ConfigDict(dict(temperature=0.0, top_k=0, top_p=1.0))
    c.draft = ConfigDict(dict(self_layers=10, k=2, policy="none"))
    c.prompts = ConfigDict(dict(
        spec_bench_path="",  # "" = the packaged copy (specjax/bench/data/spec_bench)
        # short categories (rag / summarization prompts would pad every row to ~1k tokens)
        spec_bench_categories="writing,roleplay,reasoning,math,coding,extraction,stem,humanities",
        per_category=2,
        humaneval=",".join(str(i) for i in range(0, 96, 6)),  # 16 problems
        max_turns=1,
    ))
    if arg == "small":
        c.max_new_tokens = 32
        c.repeats = 2
    elif arg == "smollm2":
        c.model = "smollm2-135m"
        c.draft_model = ""
        c.max_new_tokens = 32
    elif arg == "tiny":
        c.model = "tiny-random"
        c.draft_model = ""
        c.draft.self_layers = 1
        c.methods = "autoregressive,sd_chain/k=2,smartspec/max_k=2"
        c.batch_sizes = "1,3"
        c.max_new_tokens = 8
        c.repeats = 2
        c.toy_prompts = 2
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r}; valid: '', 'small', 'smollm2', 'tiny'")
    return c

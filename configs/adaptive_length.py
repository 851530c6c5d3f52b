"""Issue 6 benchmark: length policies vs fixed-K chain SD on the Qwen2.5-Coder pair.

    python -m experiments.run --config=configs/adaptive_length.py --workdir=workdir/adaptive
    python -m experiments.run --config=configs/adaptive_length.py:small ...  # 5 prompts, 64 tokens
    python -m experiments.run --config=configs/adaptive_length.py:tiny ...   # 1 prompt, 16 tokens

Draft Qwen2.5-Coder-0.5B -> target 1.5B, greedy (set
--config.sampling.temperature=0.7 for the sampled variant). Fixed-K chains
(K = 2, 4) against the adaptive policies of `specjax.policies`: HF's heuristic
schedule, Kangaroo confidence stop, SpecDec++ threshold and SmartSpec goodput,
each a chain of at most 8 drafts verified at widths 1, 2, 3, 5 or 9; a static
top-k tree, DySpec (16 nodes), RSD-S (beam 3, depth 4) and PEARL (gamma 4, set by
configs/quickstart.py's config.draft.pearl.gamma; "auto" = measured).
A Sequoia tree needs a template measured for the pair first
(`python -m experiments.sequoia_tree --target=qwen2.5-coder-1.5b
--draft=qwen2.5-coder-0.5b --out=PATH`), then add `sequoia` with
`--config.draft.sequoia_tree=PATH@16` (add the key to config.draft).
"""

from ml_collections import ConfigDict

from configs import quickstart

ADAPTIVE = ("sd_schedule/widths={w}", "sd_confidence/threshold=0.5/widths={w}",
            "specdecpp/threshold=0.3/widths={w}", "smartspec/widths={w}")


def get_config(arg: str | None = None) -> ConfigDict:
    c = quickstart.get_config()
    c.model = "qwen2.5-coder-1.5b"
    c.draft_model = "qwen2.5-coder-0.5b"
    widths = "1.2.3.5"
    c.methods = ",".join(["autoregressive", "sd_chain/k=2", "sd_chain/k=4"]
                         + [m.format(w=widths) for m in ADAPTIVE]
                         + ["sd_tree/tree=2.2.1", "dyspec", "rsd_s", "pearl"])
    c.max_new_tokens = 128
    c.prompts.spec_bench_categories = ""
    c.prompts.humaneval = ",".join(str(i) for i in range(0, 100, 5))  # 20 problems
    if arg == "small":
        c.max_new_tokens = 64
        c.prompts.humaneval = "0,20,40,60,80"
    elif arg == "tiny":
        c.max_new_tokens = 16
        c.prompts.humaneval = "0"
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r}; valid: '', 'small', 'tiny'")
    return c

"""Issue 19: the other decoders, their outputs and the figures their papers report, in the
standard results table (`table.md`: speed, then the output-quality table of
`specjax.bench.quality`).

    python -m experiments.run --config=configs/decoders.py --workdir=workdir/decoders
    python -m experiments.run --config=configs/decoders.py:json ...       # constrained AR vs SD
    python -m experiments.run --config=configs/decoders.py:json+free ...  # unconstrained compliance
    python -m experiments.run --config=configs/decoders.py:mirostat ...   # perplexity control
    python -m experiments.run --config=configs/decoders.py:sampling ...   # the same, no mirostat
    python -m experiments.run --config=configs/decoders.py:cfg ...        # guidance (AR and SD)
    python -m experiments.run --config=configs/decoders.py:qwen ...       # the Qwen pair, code
    (+small: 2 prompts, 32 tokens: a smoke run)

Variants:
  (default)  greedy, beam search / diverse beam search, momentum decoding and
             superposed decoding on Spec-Bench writing/roleplay questions and HumanEval
             problems: rep-4 and distinct-2 (momentum, DBS), the beams' distinct-2 (DBS),
             the drafts' bits/token (superposed: coherence) and speed; reranking of 4
             samples at temperature 0.8 by the target's likelihood.
  json       the 12 JSONSchemaBench-style schemas of `decoders.schema_suite`, every method
             under its prompt's grammar (`config.transform = "grammar"`): compliance
             (json valid = 1.0 by construction) and the speedup of constrained SD (prompt
             lookup, Token Recycling) over constrained autoregressive decoding, outputs
             identical; +free drops the grammar (the model's own compliance).
  mirostat   sampling at temperature 1 under Mirostat 2 (tau = 3 bits): bits/token of the
             outputs ~ tau for the autoregressive loop and for SD with prompt lookup;
             `sampling` is the same run without mirostat.
  cfg        classifier-free guidance at scale 1.5, autoregressive and prompt lookup.
  qwen       Qwen2.5-Coder-1.5B (0.5B draft) on HumanEval: the text decoders, plus
             sd_chain; combine with json for constrained SD with the draft model.
"""

from ml_collections import ConfigDict

from configs import quickstart

TEXT_METHODS = ("autoregressive,beam_search/groups=1/beams=4,beam_search,momentum,"
                "superposed,superposed/ngram_weight=0.5,rerank")
SPEC_BENCH_WRITING = "81,82,91,92"  # MT-bench writing and roleplay, first turns


def get_config(arg: str | None = None) -> ConfigDict:
    variants = [v for v in (arg or "").split("+") if v]
    unknown = set(variants) - {"json", "free", "mirostat", "sampling", "cfg", "qwen", "small"}
    if unknown:
        raise ValueError(f"unknown variant {sorted(unknown)}; valid: json, free, mirostat, "
                         "sampling, cfg, qwen, small (combine with '+')")
    c = quickstart.get_config()
    c.quality = True
    c.transform = ""
    c.max_new_tokens = 96
    c.methods = TEXT_METHODS
    c.prompts.spec_bench_categories = ""
    c.prompts.spec_bench_ids = SPEC_BENCH_WRITING
    c.prompts.humaneval = "0,5,10,15"
    c.prompts.json_schemas = ""
    if "qwen" in variants:
        c.model, c.draft_model = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
        c.prompts.spec_bench_ids = ""
        c.methods = TEXT_METHODS + ",sd_chain/k=4"
    if "json" in variants:
        c.transform = "" if "free" in variants else "grammar"
        c.methods = "autoregressive,pld,token_recycling" + (
            ",sd_chain/k=4" if "qwen" in variants else "")
        c.max_new_tokens = 128
        c.prompts.spec_bench_ids = ""
        c.prompts.humaneval = ""
        c.prompts.json_schemas = "all"
    if "mirostat" in variants or "sampling" in variants:
        c.sampling.temperature = 1.0
        c.transform = "mirostat:version=2,tau=3.0" if "mirostat" in variants else ""
        c.methods = "autoregressive,pld"
    if "cfg" in variants:
        c.transform = "cfg:scale=1.5"
        c.methods = "autoregressive,pld"
    if "small" in variants:
        c.max_new_tokens = 32
        c.prompts.spec_bench_ids = "81" if c.prompts.spec_bench_ids else ""
        c.prompts.humaneval = "0" if c.prompts.humaneval else ""
        c.prompts.json_schemas = "person,scores" if c.prompts.json_schemas else ""
    return c

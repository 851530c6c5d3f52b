"""Generation loops: the autoregressive baseline and speculative decoding.

Everything from prefill to the last token runs in ONE jitted function whose
body is a `lax.while_loop` over a typed `DecodeState`; rows of a batch stop
independently at an EOS token or at `max_new_tokens`. Host-side wrappers only
validate and pad the inputs.

  state           DecodeState, the shared prologue and bookkeeping
  host            prompt padding and checks, results as token lists
  autoregressive  the baseline loop
  speculative     Method (drafter x policy x verifier) and the SD loop
  pearl           PEARL, parallel drafting and verification (arXiv:2408.11850)
"""

from specjax.decode.autoregressive import autoregressive_generate, autoregressive_loop
from specjax.decode.host import (
    Generation,
    cache_size,
    check_capacity,
    check_tokens,
    pad_prompts,
    prepare_prompts,
    prompts_from_padded,
    raise_on_nan,
    to_generation,
)
from specjax.decode.speculative import (
    Method,
    SpecCounters,
    SpecGeneration,
    SpecStats,
    speculative_generate,
    speculative_loop,
    tau_of_hist,
)
from specjax.decode.state import DecodeState, GenerateOutput, append_tokens, output, running, start

__all__ = [
    "DecodeState", "GenerateOutput", "Generation", "Method", "SpecCounters", "SpecGeneration",
    "SpecStats", "append_tokens", "autoregressive_generate", "autoregressive_loop", "cache_size",
    "check_capacity", "check_tokens", "output", "pad_prompts", "prepare_prompts",
    "prompts_from_padded", "raise_on_nan", "running", "speculative_generate", "speculative_loop",
    "start", "tau_of_hist", "to_generation",
]

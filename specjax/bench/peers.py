"""Peers run in the same benchmark: HuggingFace transformers on PyTorch (CPU).

Needs the `peers` extra (torch). Both stacks load the same dequantised
weights, so they compute with the same numbers. Three generators, all greedy:

  hf_greedy            `model.generate(do_sample=False)`
  hf_assisted          `generate(assistant_model=draft)` (Leviathan et al.
                       arXiv:2211.17192 as implemented by HF, with its
                       heuristic draft-length schedule)
  hf_prompt_lookup     `generate(prompt_lookup_num_tokens=n)` (PLD, Saxena
                       2023)

Target forwards are counted with a forward hook, so tau and forwards per
token are comparable with ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from specjax.bench.runner import GenResult, Generator


def load_hf_model(name_or_path: str | Path):
    """A float32 transformers CausalLM with exactly the weights `loading.load` gives.

    GGUF assets are opened through specjax's dequantised cache directory (an
    HF checkpoint, see `loading.hf_dir`); transformers' own GGUF loader gives
    the same numbers (tested) but takes far longer.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from specjax.models import loading

    path = loading.hf_dir(name_or_path)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


class _CallCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def hf_generator(
    name: str,
    model,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    assistant=None,
    prompt_lookup_num_tokens: int | None = None,
    pad_id: int = 0,
) -> Generator:
    """A `Generator` running transformers' greedy `generate` (optionally assisted)."""
    import torch

    counter = _CallCounter(model)
    extra = {}
    if assistant is not None:
        extra["assistant_model"] = assistant
    if prompt_lookup_num_tokens:
        extra["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens

    def fn(ids: list[int]) -> GenResult:
        counter.calls = 0
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False,
                max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids), pad_token_id=pad_id,
                **extra)
        new = out[0, len(ids):].tolist()
        return GenResult(tokens=new, target_calls=counter.calls)

    return Generator(name, fn, jax_based=False)

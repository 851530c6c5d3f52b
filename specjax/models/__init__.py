"""Decoder LMs (Llama / Qwen2), KV cache, loaders, tokenizers and named assets."""

from specjax.models.cache import KVBlock, KVCache, abstract_cache, commit, init_cache
from specjax.models.config import ModelConfig, from_hf_config, to_hf_config
from specjax.models.decoder import (
    ForwardOutput,
    attention_mask,
    causal_mask,
    decode_step,
    forward,
    logits_from_hidden,
    prefill,
    transformer,
)
from specjax.models.params import abstract_params, init_params, param_shapes
from specjax.models.loading import hf_dir, load, load_tokenizer
from specjax.models.tokenizer import apply_chat_template, stop_token_ids

__all__ = [
    "KVBlock",
    "KVCache",
    "abstract_cache",
    "commit",
    "init_cache",
    "ModelConfig",
    "from_hf_config",
    "to_hf_config",
    "ForwardOutput",
    "attention_mask",
    "causal_mask",
    "decode_step",
    "forward",
    "logits_from_hidden",
    "prefill",
    "transformer",
    "abstract_params",
    "init_params",
    "param_shapes",
    "hf_dir",
    "load",
    "load_tokenizer",
    "apply_chat_template",
    "stop_token_ids",
]

"""Model configuration for the Llama / Qwen2 decoder families.

`ModelConfig` is a frozen, hashable dataclass so that it can be a static
argument of jitted functions. It is built from a HuggingFace `config.json`
dictionary (`from_hf_config`) or from GGUF metadata (see `models.gguf_io`).
`Params`, the type of the parameter pytree that goes with it (its layout is
described in `models.params`), lives here too, so that every module of
`specjax.models` can name both without importing `models.params`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

Params = dict  # the parameter pytree (`models.params`: plain or panel layout)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape and numerics of a decoder-only LM.

    Attributes:
      arch: "llama" or "qwen2" (Qwen2 = Llama + q/k/v bias).
      vocab_size: V.
      dim: model width D.
      num_layers: L.
      num_heads: N query heads.
      num_kv_heads: K key/value heads (K divides N; K == N is MHA).
      head_dim: H.
      ffn_dim: hidden width F of the SwiGLU MLP.
      rope_theta: RoPE base.
      norm_eps: RMSNorm epsilon.
      qkv_bias: whether q/k/v projections have a bias (Qwen2).
      tie_embeddings: lm_head is the transpose of the embedding.
      max_position_embeddings: informational; the cache size is chosen by
        the caller.
      dtype: parameter / activation dtype name ("float32" or "bfloat16").
      panel_head_rows: (lo, hi): a forward of M = lo..hi rows (batch x tokens)
        uses the panelled LM head when the params hold one and a plain head
        too (`models.params.convert`, chosen per machine by
        `models.layout`); not part of the architecture.
    """

    arch: str
    vocab_size: int
    dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    panel_head_rows: tuple[int, int] = (1, 2**31 - 1)

    def __post_init__(self):
        if self.arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.arch!r}; supported: {SUPPORTED_ARCHITECTURES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def from_hf_config(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """Builds a `ModelConfig` from a HuggingFace `config.json` dictionary.

    Supports `model_type` "llama" and "qwen2". RoPE scaling is not supported
    (neither SmolLM2 nor Qwen2.5 use it) and is rejected rather than ignored.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {SUPPORTED_ARCHITECTURES}"
        )
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ValueError(f"rope_scaling {scaling!r} is not supported")
    num_heads = hf["num_attention_heads"]
    theta = hf.get("rope_theta")
    if theta is None:  # transformers >= 5 keeps it under rope_parameters
        theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(
        arch=model_type,
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        ffn_dim=hf["intermediate_size"],
        rope_theta=float(theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        dtype=dtype,
    )


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """Inverse of `from_hf_config`: a `config.json` dictionary for transformers."""
    hf = {
        "model_type": cfg.arch,
        "architectures": ["LlamaForCausalLM" if cfg.arch == "llama" else "Qwen2ForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ffn_dim,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": "silu",
    }
    if cfg.arch == "llama":
        hf["attention_bias"] = cfg.qkv_bias
        hf["mlp_bias"] = False
    return hf

"""Reading (and, for tests, writing) GGUF files with numpy only.

A GGUF file holds metadata (architecture hyper-parameters, the tokenizer) and
tensors under llama.cpp names (`blk.3.attn_q.weight`), possibly quantised
(Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, ...). This module

  * dequantises every tensor with `gguf.quants.dequantize` (numpy, no torch),
  * renames tensors to HuggingFace names (`model.layers.3.self_attn.q_proj.weight`),
  * undoes llama.cpp's row permutation of q/k projections for the "llama"
    architecture (llama.cpp uses interleaved RoPE; HF uses rotate-half),
  * builds an HF `config.json`-style dictionary from the metadata,

so that `params.params_from_hf_tensors` (the one place that knows both the HF
and the specjax layouts) can turn the result into the parameter pytree.

GGUF lists dimensions fastest-moving first (ggml order): a HF weight of shape
[out, in] is stored with shape (in, out). Arrays returned here are in HF order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import gguf
import numpy as np
from tqdm.auto import tqdm

from specjax.models import config as config_lib
from specjax.models import params as params_lib
from specjax.models.hf_io import np_dtype as _np_dtype

GGMLType = gguf.GGMLQuantizationType

# GGUF name -> HF name, for tensors outside the layer stack.
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# GGUF "blk.{i}.<key>.<weight|bias>" -> HF "model.layers.{i}.<value>.<weight|bias>".
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Architectures whose q/k rows llama.cpp's converter permutes (interleaved RoPE).
PERMUTED_QK_ARCHS = ("llama",)

_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# ---------------------------------------------------------------------------
# names and permutations


def hf_tensor_name(gguf_name: str) -> str:
    """Maps a llama.cpp tensor name to its HuggingFace name.

    Raises:
      ValueError: the tensor is not part of a Llama/Qwen2 decoder (e.g.
        `rope_freqs.weight`, which would mean an unsupported RoPE scaling).
    """
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}.{m.group(3)}"
    raise ValueError(f"GGUF tensor {gguf_name!r} is not a Llama/Qwen2 decoder tensor")


def gguf_tensor_name(hf_name: str) -> str:
    """Inverse of `hf_tensor_name`."""
    for g, h in GLOBAL_TENSORS.items():
        if h == hf_name:
            return g
    m = _HF_LAYER_RE.match(hf_name)
    inverse = {v: k for k, v in LAYER_TENSORS.items()}
    if m and m.group(2) in inverse:
        return f"blk.{m.group(1)}.{inverse[m.group(2)]}.{m.group(3)}"
    raise ValueError(f"HF tensor {hf_name!r} has no GGUF name")


def permute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k rows (HF -> GGUF layout).

    Within each head, HF orders the rotary pairs as [first halves, second
    halves] (rotate-half RoPE); llama.cpp interleaves them (x0, x_{H/2}, x1,
    ...). Works for weights [N*H, D] and biases [N*H].

    Args:
      w: q_proj (num_heads = query heads) or k_proj (num_heads = kv heads).
      num_heads: number of heads the rows are split into.
    """
    head_dim = w.shape[0] // num_heads
    return (
        w.reshape(num_heads, 2, head_dim // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `permute_qk` (GGUF -> HF layout)."""
    head_dim = w.shape[0] // num_heads
    return (
        w.reshape(num_heads, head_dim // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# ---------------------------------------------------------------------------
# metadata and config


def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """Opens a GGUF file (memory-mapped, read-only).

    Raises:
      FileNotFoundError, ValueError: missing file, or not a valid GGUF file
        (bad magic, truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """All metadata key/values as Python scalars, strings and lists."""
    return {key: field.contents() for key, field in reader.fields.items()}


def hf_config_from_metadata(
    metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    """An HF `config.json` dictionary for a Llama/Qwen2 GGUF.

    Args:
      metadata: from `read_metadata`.
      tensor_shapes: GGUF tensor name -> shape in HF order; decides the vocab
        size (rows of the embedding) and tied embeddings (no `output.weight`).

    Returns:
      A dictionary `config.from_hf_config` accepts (and transformers loads).

    Raises:
      ValueError: unsupported architecture or RoPE scaling, missing keys.
    """
    arch = metadata.get("general.architecture")
    if arch not in config_lib.SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: "
            f"{config_lib.SUPPORTED_ARCHITECTURES}"
        )

    def get(key, default=None, required=False):
        full = f"{arch}.{key}"
        if full not in metadata:
            if required:
                raise ValueError(f"GGUF metadata lacks {full!r}")
            return default
        return metadata[full]

    dim = int(get("embedding_length", required=True))
    num_heads = int(get("attention.head_count", required=True))
    num_kv_heads = int(get("attention.head_count_kv", num_heads))
    head_dim = int(get("attention.key_length", 0) or dim // num_heads)
    rope_dims = get("rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ValueError(
            f"partial rotary embeddings (rope.dimension_count={rope_dims}, head_dim={head_dim}) "
            "are not supported"
        )
    scaling = get("rope.scaling.type")
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError("GGUF file has no token_embd.weight tensor")
    vocab = tensor_shapes["token_embd.weight"][0]
    hf: dict[str, Any] = {
        "model_type": arch,
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "vocab_size": int(vocab),
        "hidden_size": dim,
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "rope_theta": _f32_to_float(get("rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32_to_float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "hidden_act": "silu",
    }
    if scaling not in (None, "none"):
        hf["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor")}
    if arch == "llama":
        hf["attention_bias"] = "blk.0.attn_q.bias" in tensor_shapes
        hf["mlp_bias"] = False
    for ours, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in metadata:
            hf[ours] = int(metadata[f"tokenizer.ggml.{key}"])
    return hf


def _f32_to_float(x: float) -> float:
    """The shortest decimal of a float32 metadata value (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def tensor_shapes(reader: gguf.GGUFReader) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape in HF (row-major, slowest first) order."""
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}


# ---------------------------------------------------------------------------
# tensors


def dequantize(tensor: gguf.ReaderTensor) -> np.ndarray:
    """Dequantises one GGUF tensor to float32, in HF shape order.

    Args:
      tensor: a `GGUFReader` tensor of any type `gguf.quants` supports (F32,
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ*, ...).

    Returns:
      A new float32 array (not a view of the memory map).

    Raises:
      ValueError: unsupported type, or the data does not hold the elements
        the header promises (truncated file).
    """
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    try:
        out = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    except NotImplementedError as e:
        raise ValueError(f"tensor {tensor.name!r}: cannot dequantise {tensor.tensor_type.name} ({e})") from e
    if out.size != int(np.prod(shape)):
        raise ValueError(
            f"tensor {tensor.name!r} ({tensor.tensor_type.name}) holds {out.size} values, "
            f"header says shape {shape}"
        )
    out = np.asarray(out, dtype=np.float32)
    if np.shares_memory(out, tensor.data):  # F32 is a view of the memory map
        out = out.copy()
    return out.reshape(shape)


def iter_hf_tensors(
    reader: gguf.GGUFReader,
    hf_config: Mapping[str, Any],
    dtype: np.dtype | str = np.float32,
    progress: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` for every tensor, dequantised and in HF layout.

    One tensor is materialised at a time, so a caller that writes each one
    out (e.g. to a safetensors cache) never holds the whole model.

    Args:
      reader: an open GGUF file.
      hf_config: from `hf_config_from_metadata` (heads, for un-permuting).
      dtype: output dtype (numpy dtype or name, e.g. "float32", "bfloat16").
      progress: show a tqdm bar.
    """
    dtype = _np_dtype(dtype)
    arch = hf_config["model_type"]
    heads = {"q_proj": hf_config["num_attention_heads"], "k_proj": hf_config["num_key_value_heads"]}
    for tensor in tqdm(reader.tensors, desc="dequantise GGUF", disable=not progress, unit="tensor"):
        name = hf_tensor_name(tensor.name)
        w = dequantize(tensor)  # [out, in] or [out]
        if arch in PERMUTED_QK_ARCHS:
            for proj, n in heads.items():
                if f".{proj}." in name:
                    w = unpermute_qk(w, n)
        yield name, w.astype(dtype, copy=False)


def load_gguf_hf(
    path: str | os.PathLike, dtype: np.dtype | str = np.float32, progress: bool = False
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads a whole GGUF into an HF config dictionary and HF-named tensors.

    Args:
      path: a .gguf file.
      dtype: dtype of the returned arrays.
      progress: show a tqdm bar.

    Returns:
      `(hf_config, {hf_name: array [out, in]})`.
    """
    reader = open_gguf(path)
    hf = hf_config_from_metadata(read_metadata(reader), tensor_shapes(reader))
    return hf, dict(iter_hf_tensors(reader, hf, dtype, progress))


def load_gguf(
    path: str | os.PathLike, dtype: str = "float32", progress: bool = False
) -> tuple[config_lib.ModelConfig, config_lib.Params]:
    """Loads a GGUF file into `(ModelConfig, params)` (numpy arrays), no caching.

    `models.loading.load` is the cached entry point; this is the direct path.
    """
    hf, tensors = load_gguf_hf(path, dtype, progress)
    cfg = config_lib.from_hf_config(hf, dtype=_np_dtype(dtype).name)
    return cfg, params_lib.params_from_hf_tensors(cfg, tensors)


# ---------------------------------------------------------------------------
# writing (tests, and exporting tiny models)


def write_gguf(
    path: str | os.PathLike,
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    qtype: Callable[[str, np.ndarray], GGMLType] | GGMLType = GGMLType.F32,
    tokenizer: Mapping[str, Any] | None = None,
    permute: bool = True,
) -> Path:
    """Writes HF-named tensors as a GGUF file the way llama.cpp's converter does.

    Args:
      path: output file.
      hf_config: HF config dictionary (model_type "llama" or "qwen2").
      tensors: HF name -> array in HF layout ([out, in]).
      qtype: storage type for every tensor, or `qtype(hf_name, array)`.
        Quantised types need rows (the `in` dimension) that are a multiple of
        the type's block size; 1-D tensors are best kept F32.
      tokenizer: optional `tokenizer.ggml.*` / `tokenizer.chat_template`
        metadata, keys without the "tokenizer." prefix, e.g.
        {"ggml.model": "gpt2", "ggml.tokens": [...], "ggml.merges": [...],
         "ggml.token_type": [...], "ggml.bos_token_id": 1, "chat_template": "..."}.
      permute: apply llama.cpp's q/k permutation for the llama architecture
        (False writes a file as a buggy converter would; tests use it).

    Returns:
      The path written.
    """
    arch = hf_config["model_type"]
    num_heads = hf_config["num_attention_heads"]
    num_kv = hf_config.get("num_key_value_heads") or num_heads
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // num_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("specjax-test")
    writer.add_block_count(hf_config["num_hidden_layers"])
    writer.add_context_length(hf_config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf_config["hidden_size"])
    writer.add_feed_forward_length(hf_config["intermediate_size"])
    writer.add_head_count(num_heads)
    writer.add_head_count_kv(num_kv)
    writer.add_rope_freq_base(float(hf_config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(hf_config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(hf_config["vocab_size"])
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim * num_heads != hf_config["hidden_size"]:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    for key, value in (tokenizer or {}).items():
        _add_kv(writer, f"tokenizer.{key}", value)

    for hf_name, w in tensors.items():
        if hf_name == "lm_head.weight" and hf_config.get("tie_word_embeddings"):
            continue
        w = np.asarray(w, dtype=np.float32)
        if permute and arch in PERMUTED_QK_ARCHS:
            if ".q_proj." in hf_name:
                w = permute_qk(w, num_heads)
            elif ".k_proj." in hf_name:
                w = permute_qk(w, num_kv)
        t = qtype(hf_name, w) if callable(qtype) else qtype
        data = gguf.quants.quantize(w, t)
        name = gguf_tensor_name(hf_name)
        if t in (GGMLType.F32, GGMLType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_kv(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Adds one metadata value, choosing the GGUF type from the Python type."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store metadata {key!r} of type {type(value).__name__}")

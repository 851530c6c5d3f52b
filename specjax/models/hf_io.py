"""Reading and writing HuggingFace checkpoint directories (safetensors).

A checkpoint directory holds `config.json` and either `model.safetensors`
or shards listed in `model.safetensors.index.json`. Reading is lazy: tensors
are read from the memory-mapped files one at a time while the parameter pytree
is stacked, so peak memory is about one copy of the model. `params.py` does
the HF-name -> pytree conversion; this module only moves bytes.

The same format is the on-disk cache of dequantised GGUF weights (see
`models.loading`), so a cached model can also be opened by transformers'
`from_pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from specjax.models import config as config_lib
from specjax.models import params as params_lib

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def np_dtype(dtype: Any) -> np.dtype:
    """numpy dtype from a name or dtype; "bfloat16" maps to ml_dtypes' bfloat16."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def is_hf_dir(path: str | os.PathLike) -> bool:
    """Whether `path` looks like an HF checkpoint directory (has config.json)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of a checkpoint directory as a dictionary."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not an HF checkpoint directory: no {CONFIG_FILE}")
    with open(file) as f:
        return json.load(f)


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors file(s) of a checkpoint: the single file or the index's shards.

    Raises:
      FileNotFoundError: no safetensors weights (e.g. only pytorch_model.bin),
        or a shard named in the index is missing.
    """
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in {INDEX_FILE} are missing: {missing}")
        return [path / s for s in shards]
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    raise FileNotFoundError(
        f"{path} has no {SINGLE_FILE} or {INDEX_FILE}"
        + (" (only PyTorch .bin weights, which are not supported)" if any(path.glob("*.bin")) else "")
    )


class LazyTensors(Mapping[str, np.ndarray]):
    """Read-only mapping HF name -> numpy array, read from safetensors on access."""

    def __init__(self, files: Iterable[Path]):
        self._handles = [safe_open(str(f), framework="numpy") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where


def load_hf_tensors(path: str | os.PathLike) -> LazyTensors:
    """Lazy HF-named tensors of a checkpoint directory."""
    return LazyTensors(safetensors_files(path))


def load_hf_dir(
    path: str | os.PathLike, dtype: str = "float32"
) -> tuple[config_lib.ModelConfig, config_lib.Params]:
    """Loads an HF Llama/Qwen2 checkpoint directory.

    Args:
      path: directory with config.json and safetensors weights.
      dtype: parameter dtype name ("float32", "bfloat16", ...); checkpoint
        tensors are cast to it.

    Returns:
      `(ModelConfig, params)` with params as numpy arrays in the layout of
      `models.params`.
    """
    hf = read_hf_config(path)
    cfg = config_lib.from_hf_config(hf, dtype=np_dtype(dtype).name)
    params = params_lib.params_from_hf_tensors(cfg, load_hf_tensors(path), dtype=np_dtype(dtype))
    return cfg, params


def write_safetensors(
    tensors: Iterable[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Writes named tensors as `model.safetensors`, or shards plus an index.

    Tensors are consumed from an iterator and flushed shard by shard, so a
    model larger than memory can be written from a streaming source.

    Args:
      tensors: `(hf_name, array)` pairs.
      path: output directory (created).
      max_shard_bytes: start a new shard when the current one would exceed
        this; None writes a single file.

    Returns:
      The files written.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = []
    temp_files: list[Path] = []
    current: dict[str, np.ndarray] = {}
    size = 0

    def flush():
        nonlocal current, size
        if current:
            f = path / f".shard-{len(temp_files):05d}.safetensors"
            save_file(current, str(f), metadata={"format": "pt"})
            f.chmod(0o644)
            temp_files.append(f)
            shards.append({k: None for k in current})
            current, size = {}, 0

    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if max_shard_bytes and current and size + array.nbytes > max_shard_bytes:
            flush()
        current[name] = array
        size += array.nbytes
    flush()
    if not temp_files:
        raise ValueError("no tensors to write")

    if len(temp_files) == 1:
        final = [path / SINGLE_FILE]
        os.replace(temp_files[0], final[0])
        return final
    n = len(temp_files)
    final = [path / f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for tmp, dst, names in zip(temp_files, final, shards):
        os.replace(tmp, dst)
        weight_map.update({k: dst.name for k in names})
    total = sum(f.stat().st_size for f in final)
    with open(path / INDEX_FILE, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return final


def write_hf_config(hf_config: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Writes `config.json` into directory `path`."""
    Path(path).mkdir(parents=True, exist_ok=True)
    file = Path(path) / CONFIG_FILE
    with open(file, "w") as f:
        json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    return file


def save_hf_dir(
    cfg: config_lib.ModelConfig,
    params: config_lib.Params,
    path: str | os.PathLike,
    max_shard_bytes: int | None = None,
    tokenizer: Any = None,
) -> Path:
    """Writes `(cfg, params)` as an HF checkpoint directory.

    transformers' `AutoModelForCausalLM.from_pretrained(path)` can open it,
    and so can `load_hf_dir`.

    Args:
      cfg: model config (written as config.json via `config.to_hf_config`).
      params: parameter pytree (numpy or jax arrays).
      path: output directory (created).
      max_shard_bytes: shard the weights (with an index) above this size.
      tokenizer: optional tokenizer with `save_pretrained`, saved alongside.

    Returns:
      The directory.
    """
    path = Path(path)
    hf = config_lib.to_hf_config(cfg)
    hf["torch_dtype"] = cfg.dtype
    write_hf_config(hf, path)
    write_safetensors(params_lib.params_to_hf_tensors(cfg, params).items(), path, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path

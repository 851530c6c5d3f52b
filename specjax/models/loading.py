"""One entry point for model weights and tokenizers, with an on-disk cache.

    cfg, params = load("smollm2-135m")              # named asset (fetched if needed)
    cfg, params = load("/models/x.Q4_K_M.gguf")     # any Llama/Qwen2 GGUF file
    cfg, params = load("/models/Qwen2.5-0.5B")      # HF dir: config.json + *.safetensors
    tok = load_tokenizer("smollm2-135m")

GGUF weights are dequantised once and cached as an HF checkpoint directory
(config.json + safetensors + tokenizer files) under

    <cache>/converted-v1/<source key>/<dtype>/      weights, one dir per dtype
    <cache>/converted-v1/<source key>/tokenizer/    tokenizer (save_pretrained)

where <cache> is `$SPECJAX_CACHE` or `~/.cache/specjax`. Later loads read the
safetensors directly. Directories appear atomically (built under a temporary
name, then renamed), so an interrupted conversion leaves no half cache. The
cached weights dir is a valid HF checkpoint: `hf_dir(name)` returns it, e.g.
for transformers' `from_pretrained` in peer benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from specjax.models import assets as assets_lib
from specjax.models import config as config_lib
from specjax.models import gguf_io, hf_io
from specjax.models import tokenizer as tokenizer_lib

CACHE_VERSION = 1  # bump when the converted format changes; old caches are ignored
SHARD_BYTES = 2 << 30  # 2 GiB safetensors shards for the converted cache
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                    "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model comes from.

    Attributes:
      kind: "gguf" (a named asset or a .gguf file) or "hf" (checkpoint dir).
      path: the .gguf file or the directory.
      key: cache key of a GGUF source (name or stem plus a fingerprint).
    """

    kind: str
    path: Path
    key: str | None = None


def resolve(name_or_path: str | os.PathLike, root: Path | None = None, fetch: bool = True,
            progress: bool = True) -> Source:
    """Finds the model an asset name or path refers to.

    Args:
      name_or_path: asset name (see `assets.ASSETS`), .gguf file or HF dir.
      root: cache root, default `assets.cache_dir()`.
      fetch: download a named asset that is not cached yet.
      progress: progress bars for a fetch.

    Raises:
      ValueError: neither a known asset nor an existing GGUF file / HF dir.
    """
    name = str(name_or_path)
    if name in assets_lib.ASSETS:
        asset = assets_lib.get_asset(name)
        path = assets_lib.asset_path(name, root)
        if not assets_lib.is_fetched(name, root):
            if not fetch:
                raise FileNotFoundError(f"asset {name!r} is not fetched (expected {path})")
            path = assets_lib.fetch(name, root=root, progress=progress)
        return Source("gguf", path, f"{name}-{asset.sha256[:12]}")
    path = Path(name).expanduser()
    if path.is_file() and _is_gguf(path):
        st = path.stat()
        fingerprint = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return Source("gguf", path, f"{path.stem}-{fingerprint.hexdigest()[:12]}")
    if path.is_dir():
        if not hf_io.is_hf_dir(path):
            raise ValueError(f"{path} is a directory without config.json, not an HF checkpoint")
        return Source("hf", path)
    raise ValueError(
        f"{name!r} is not a named asset ({', '.join(sorted(assets_lib.ASSETS))}), "
        "nor an existing .gguf file or HF checkpoint directory"
    )


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _converted_root(source: Source, root: Path | None) -> Path:
    return Path(root or assets_lib.cache_dir()) / f"converted-v{CACHE_VERSION}" / source.key


def hf_dir(
    name_or_path: str | os.PathLike,
    dtype: str = "float32",
    root: Path | None = None,
    progress: bool = True,
) -> Path:
    """An HF checkpoint directory for the model, converting a GGUF once.

    Args:
      name_or_path: asset name, .gguf file or HF directory.
      dtype: dtype of the cached weights ("float32", "bfloat16", ...).
      root: cache root, default `assets.cache_dir()`.
      progress: progress bars.

    Returns:
      The HF directory itself for an HF source; otherwise the cached
      conversion `<cache>/converted-v1/<key>/<dtype>/`.
    """
    source = resolve(name_or_path, root, progress=progress)
    if source.kind == "hf":
        return source.path
    out = _converted_root(source, root) / hf_io.np_dtype(dtype).name
    if not out.is_dir():
        _convert_gguf(source, out, dtype, root, progress)
    return out


def _convert_gguf(source: Source, out: Path, dtype: str, root: Path | None, progress: bool) -> None:
    """Dequantises a GGUF into the HF directory `out`, atomically."""
    reader = gguf_io.open_gguf(source.path)
    metadata = gguf_io.read_metadata(reader)
    hf = gguf_io.hf_config_from_metadata(metadata, gguf_io.tensor_shapes(reader))
    config_lib.from_hf_config(hf)  # validate before spending time on tensors
    hf["torch_dtype"] = hf_io.np_dtype(dtype).name
    try:
        tok_dir = _ensure_tokenizer_dir(source, root, metadata)
    except ValueError as e:  # weights stay usable; load_tokenizer re-raises the problem
        warnings.warn(f"{source.path}: tokenizer not built ({e})")
        tok_dir = None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        hf_io.write_hf_config(hf, tmp)
        tensors = gguf_io.iter_hf_tensors(reader, hf, dtype, progress=progress)
        hf_io.write_safetensors(tensors, tmp, max_shard_bytes=SHARD_BYTES)
        if tok_dir is not None:
            for f in _TOKENIZER_FILES:
                if (tok_dir / f).is_file():
                    shutil.copy2(tok_dir / f, tmp / f)
        with open(tmp / "specjax_source.json", "w") as f:
            json.dump({"source": str(source.path), "key": source.key, "dtype": hf["torch_dtype"],
                       "cache_version": CACHE_VERSION}, f, indent=1)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Renames a finished temporary directory to `out` (another process may have won)."""
    tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is shared
    try:
        os.rename(tmp, out)
    except OSError:
        if not out.is_dir():
            raise


def _ensure_tokenizer_dir(source: Source, root: Path | None, metadata: dict | None = None) -> Path | None:
    """Builds and saves the tokenizer of a GGUF source once; None if it has none."""
    out = _converted_root(source, root) / "tokenizer"
    if out.is_dir():
        return out
    if metadata is None:
        metadata = gguf_io.read_metadata(gguf_io.open_gguf(source.path))
    if "tokenizer.ggml.tokens" not in metadata:
        return None
    tok = tokenizer_lib.tokenizer_from_gguf_metadata(metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", suffix=".tmp", dir=out.parent))
    try:
        tok.save_pretrained(str(tmp))
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(
    name_or_path: str | os.PathLike,
    dtype: str = "float32",
    root: Path | None = None,
    progress: bool = True,
) -> tuple[config_lib.ModelConfig, config_lib.Params]:
    """Loads a model: named asset, GGUF file or HF checkpoint directory.

    The first load of a GGUF dequantises it into the cache (see module
    docstring); later loads read the cached safetensors.

    Args:
      name_or_path: asset name (`python -m experiments.assets list`), path
        of a .gguf file, or an HF directory (config.json + *.safetensors).
      dtype: parameter dtype ("float32" or "bfloat16").
      root: cache root, default `$SPECJAX_CACHE` or `~/.cache/specjax`.
      progress: progress bars for fetching and dequantising.

    Returns:
      `(ModelConfig, params)`, params as numpy arrays in the layout of
      `models.params` (place them with `jax.device_put`).
    """
    return hf_io.load_hf_dir(hf_dir(name_or_path, dtype, root, progress), dtype)


def load_tokenizer(
    name_or_path: str | os.PathLike, root: Path | None = None, progress: bool = True
) -> tokenizer_lib.Tokenizer:
    """The tokenizer of a named asset, GGUF file or HF directory.

    GGUF tokenizers are built from the file's metadata once and cached with
    `save_pretrained` under `<cache>/converted-v1/<key>/tokenizer/`.
    """
    source = resolve(name_or_path, root, progress=progress)
    if source.kind == "hf":
        return tokenizer_lib.load_hf_tokenizer(source.path)
    tok_dir = _ensure_tokenizer_dir(source, root)
    if tok_dir is None:
        raise ValueError(f"GGUF file {source.path} has no tokenizer metadata")
    return tokenizer_lib.load_saved_tokenizer(tok_dir)


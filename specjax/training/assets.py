"""Trained heads as assets: saved with the identity of their target, refused elsewhere.

A head only works on the target whose hidden states it was trained on. Its
directory holds

    head.json          {"kind", "config" (the head's config dataclass as a dict),
                        "target" (`target_identity`), "training" (provenance:
                        corpus, steps, tokens, metrics), "format"}
    params.safetensors the head's weights, flattened ("stages.0.emb", ...)

written atomically (temporary directory, then rename). `load_head` checks
the target's identity and raises a ValueError naming both targets on a
mismatch. Named heads resolve under `<cache>/heads/<name>/` (`head_dir`),
`<cache>` = `$SPECJAX_CACHE` or `~/.cache/specjax`.

The identity is the model's shape (vocabulary, width, layers) and a SHA-256
fingerprint of a few of its weights (embedding rows and the final norm):
cheap to compute at load time, and different for another checkpoint of the
same shape. Its name is recorded but not compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "specjax-head-v1"


def target_identity(name: str, cfg, params) -> dict:
    """{"name", "arch", "vocab_size", "dim", "num_layers", "fingerprint"} of a target."""
    h = hashlib.sha256()
    embed = np.asarray(params["embed"][:64], np.float32)
    h.update(embed.tobytes())
    h.update(np.asarray(params["final_norm"], np.float32).tobytes())
    return {"name": str(name), "arch": cfg.arch, "vocab_size": int(cfg.vocab_size),
            "dim": int(cfg.dim), "num_layers": int(cfg.num_layers),
            "fingerprint": h.hexdigest()[:16]}


def check_target(expected: dict, actual: dict, what: str) -> None:
    """ValueError naming both targets unless the identities agree (the name aside: the
    same weights may be loaded by asset name or from a directory)."""
    diff = sorted(k for k in expected if k != "name" and expected.get(k) != actual.get(k))
    if diff:
        raise ValueError(f"{what} is for target {expected.get('name')!r} "
                         f"(vocab {expected.get('vocab_size')}, dim {expected.get('dim')}), "
                         f"not for {actual.get('name')!r} (vocab {actual.get('vocab_size')}, "
                         f"dim {actual.get('dim')}); differing: {diff}")


def flatten(params, prefix: str = "") -> dict[str, np.ndarray]:
    """A params pytree of dicts and lists -> {"a.0.b": array}."""
    out = {}
    if isinstance(params, dict):
        for k, v in params.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = np.asarray(params)
    return out


def unflatten(flat: dict[str, np.ndarray]):
    """Inverse of `flatten` (numeric keys become list indices)."""
    root: dict = {}
    for key, value in flat.items():
        node, parts = root, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    def fix(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [fix(node[str(i)]) for i in range(len(node))]
        return {k: fix(v) for k, v in node.items()}

    return fix(root)


def head_dir(name_or_path: str | Path) -> Path:
    """A head directory: an existing path, else `<cache>/heads/<name>`."""
    from specjax.models.assets import cache_dir

    p = Path(name_or_path).expanduser()
    if p.is_dir() or "/" in str(name_or_path):
        return p
    return Path(cache_dir()) / "heads" / str(name_or_path)


def save_head(out: str | Path, kind: str, config, params, target: dict,
              training: dict | None = None) -> Path:
    """Writes a head directory atomically (replacing an existing one only when complete)."""
    from safetensors.numpy import save_file

    from specjax.models.assets import atomic_directory

    out = head_dir(out)
    with atomic_directory(out, replace=True) as tmp:
        flat = flatten(params)
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()},
                  str(tmp / "params.safetensors"))
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        (tmp / "head.json").write_text(json.dumps(
            {"format": FORMAT, "kind": kind, "config": cfg, "target": target,
             "training": training or {}}, indent=1))
    return out


def load_head(name_or_path: str | Path, target: dict | None = None) -> tuple[dict, Any]:
    """(head.json as a dict, params) of a saved head; with `target`, its identity must match.

    Raises:
      FileNotFoundError: no head there. ValueError: another target, or an unknown format.
    """
    from safetensors.numpy import load_file

    d = head_dir(name_or_path)
    meta_file = d / "head.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"no trained head at {d} (expected head.json + "
                                "params.safetensors; train one with experiments.train)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d}: head format {meta.get('format')!r}, expected {FORMAT!r}")
    if target is not None:
        check_target(meta["target"], target, f"the head in {d}")
    return meta, unflatten(load_file(str(d / "params.safetensors")))

"""Trained heads in the checkpoint layouts of their reference implementations, and back.

Serving engines (vLLM, SGLang, TGI) and the papers' own code load EAGLE and Medusa
heads in the layout of the reference PyTorch implementations; a head trained here
(`training.assets`: head.json + params.safetensors) is exported to a directory

    config.json         the reference's config, plus {"specjax": {"format", "kind",
                        "config", "target" (`assets.target_identity`), "training"}}
    model.safetensors   the reference's tensor names, torch Linear weights [out, in]

written atomically (temporary directory, then rename), and `import_head` reads
such a directory back into a head asset, checked against the target.

EAGLE-1 (Li et al., arXiv:2401.15077; SafeAILab/EAGLE `eagle/model/cnets1.py`):
a LlamaConfig-like config.json with num_hidden_layers 1 and "bias" (the FC's bias)
and the tensors

    fc.weight [D, 2D], fc.bias [D]      FC over the concatenation [Emb(x); f], as ours
    layers.0.self_attn.{q,k,v,o}_proj.weight (+ {q,k,v}_proj.bias with qkv_bias)
    layers.0.post_attention_layernorm.weight, layers.0.mlp.{gate,up,down}_proj.weight
    embed_tokens.weight [V, D]          the target's embedding (only when the target is
                                        passed: EAGLE's loader wants it, vLLM and SGLang
                                        share the target's when it is absent)

EAGLE-1's layer 0 has no input_layernorm, so a head with `input_norm=True` (EAGLE-3's
layer) is refused. Our RoPE is HF's "rotate_half" layout, as the reference's, so
q/k weights need no permutation, only the [in, out] -> [out, in] transpose. Choice on
truncated vocabularies (FR-Spec `vocab_ids`): EAGLE-1 has no draft-to-target map
(EAGLE-3's `d2t`/`t2d` belong to another architecture), so such a head is refused
rather than exported under a layout that would silently score the wrong tokens.

Medusa-1 (Cai et al., arXiv:2401.10774; FasterDecoding/Medusa `medusa_model.py`):
config.json {"medusa_num_heads": K, "medusa_num_layers": 1,
"base_model_name_or_path", "hidden_size", "vocab_size"} and, for head i,

    medusa_head.{i}.0.linear.weight [D, D], medusa_head.{i}.0.linear.bias [D]
                                        the ResBlock x + SiLU(W x + b)
    medusa_head.{i}.1.weight [V, D]     the head's LM head

Heads on the frozen target LM head (`own_head=False`) export a copy of it per head
(the asset's saved "lm_head", else the target's, which must then be passed).
Medusa's layout has no draft vocabulary: truncated heads are refused. Import also
accepts the training script's `medusa_lm_head.safetensors` (names without the
"medusa_head." prefix); vLLM's own Medusa format (blocks.*, lm_heads.*) is not
this one. On import, K identical LM heads become the shared "lm_head" (own_head
False) unless the config's specjax section says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from specjax.drafters import eagle, heads, medusa
from specjax.models import config as config_lib
from specjax.models import hf_io
from specjax.models.assets import atomic_directory
from specjax.models.params import _BIAS_TENSORS, _LAYER_TENSORS  # the one HF-name table
from specjax.training import assets

FORMAT = "specjax-export-v1"
SPECJAX_KEY = "specjax"
KINDS = ("eagle", "medusa")
_LAYER = "layers.0."


# -- tensor layouts ----------------------------------------------------------------


def _eagle_layer_names(cfg: eagle.EagleConfig) -> dict[str, tuple[str, bool]]:
    """our layer name -> (reference name, transpose?) of EAGLE-1's layer 0."""
    if cfg.input_norm:
        raise ValueError("an EAGLE head with input_norm=True (EAGLE-3's layer) has no EAGLE-1 "
                         "equivalent: EAGLE-1's layer 0 has no input_layernorm")
    names = {k: (_LAYER + hf, t) for k, (hf, t) in _LAYER_TENSORS.items() if k != "attn_norm"}
    if cfg.qkv_bias:
        names.update({k: (_LAYER + hf, False) for k, hf in _BIAS_TENSORS.items()})
    return names


def eagle_tensor_shapes(cfg: eagle.EagleConfig, fc_bias: bool = True,
                        embedding: bool = False) -> dict[str, tuple[int, ...]]:
    """{reference name: shape} of an EAGLE-1 checkpoint for `cfg`."""
    import jax

    ours = jax.eval_shape(lambda: eagle.init_params(cfg, jax.random.key(0)))["layer"]
    out = {"fc.weight": (cfg.dim, 2 * cfg.dim)}
    if fc_bias:
        out["fc.bias"] = (cfg.dim,)
    for k, (name, t) in _eagle_layer_names(cfg).items():
        out[name] = tuple(ours[k].shape[::-1] if t else ours[k].shape)
    if embedding:
        out["embed_tokens.weight"] = (cfg.vocab_size, cfg.dim)
    return out


def medusa_tensor_shapes(cfg: medusa.MedusaConfig) -> dict[str, tuple[int, ...]]:
    """{reference name: shape} of a Medusa-1 checkpoint (one ResBlock per head)."""
    D, V = cfg.dim, cfg.vocab_size
    out = {}
    for i in range(cfg.num_heads):
        out.update({f"medusa_head.{i}.0.linear.weight": (D, D),
                    f"medusa_head.{i}.0.linear.bias": (D,), f"medusa_head.{i}.1.weight": (V, D)})
    return out


def eagle_to_reference(cfg: eagle.EagleConfig, params, embed=None) -> dict[str, np.ndarray]:
    """Our EAGLE params (fc [2D, D] used as x @ fc) -> reference tensors (fc.weight =
    fc.T, used as x @ W.T; both concatenate [embedding; feature])."""
    out = {"fc.weight": np.asarray(params["fc"]).T, "fc.bias": np.asarray(params["fc_bias"])}
    for k, (name, t) in _eagle_layer_names(cfg).items():
        a = np.asarray(params["layer"][k])
        out[name] = a.T if t else a
    if embed is not None:
        out["embed_tokens.weight"] = np.asarray(embed)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def eagle_from_reference(cfg: eagle.EagleConfig, tensors: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `eagle_to_reference` (tensors checked by `check_tensors`); a missing
    fc.bias (config "bias": false) is zeros, the embedding is the target's (dropped)."""
    fc = np.asarray(tensors["fc.weight"])
    bias = tensors.get("fc.bias")
    layer = {}
    for k, (name, t) in _eagle_layer_names(cfg).items():
        a = np.asarray(tensors[name])
        layer[k] = np.ascontiguousarray(a.T if t else a)
    return {"fc": np.ascontiguousarray(fc.T),
            "fc_bias": np.zeros((cfg.dim,), fc.dtype) if bias is None else np.asarray(bias),
            "layer": layer}


def medusa_to_reference(cfg: medusa.MedusaConfig, params, lm_head=None) -> dict[str, np.ndarray]:
    """Our Medusa params (w [K, D, D] used as h @ w[k], b [K, D], head [K, D, V] or the
    shared lm_head [D, V]) -> reference tensors (torch Linear weights, transposed)."""
    out = {}
    for i in range(cfg.num_heads):
        head = params["head"][i] if cfg.own_head else lm_head
        out[f"medusa_head.{i}.0.linear.weight"] = np.asarray(params["w"][i]).T
        out[f"medusa_head.{i}.0.linear.bias"] = np.asarray(params["b"][i])
        out[f"medusa_head.{i}.1.weight"] = np.asarray(head).T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def medusa_from_reference(cfg: medusa.MedusaConfig, tensors: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `medusa_to_reference`: own_head False keeps one "lm_head" [D, V], which
    requires the K LM heads to be equal."""
    K = cfg.num_heads
    w = np.stack([np.asarray(tensors[f"medusa_head.{i}.0.linear.weight"]).T for i in range(K)])
    b = np.stack([np.asarray(tensors[f"medusa_head.{i}.0.linear.bias"]) for i in range(K)])
    lm = [np.asarray(tensors[f"medusa_head.{i}.1.weight"]) for i in range(K)]
    out = {"w": np.ascontiguousarray(w), "b": b}
    if cfg.own_head:
        out["head"] = np.ascontiguousarray(np.stack([h.T for h in lm]))
        return out
    differ = [i for i in range(1, K) if not np.array_equal(lm[i], lm[0])]
    if differ:
        raise ValueError(f"the config says the heads share the target's LM head, but "
                         f"medusa_head.{differ[0]}.1.weight differs from medusa_head.0.1.weight")
    out["lm_head"] = np.ascontiguousarray(lm[0].T)
    return out


def check_tensors(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                  where, optional: tuple[str, ...] = ()) -> None:
    """ValueError naming the first missing, unexpected, misshapen or non-finite tensor."""
    missing = [k for k in expected if k not in tensors and k not in optional]
    if missing:
        raise ValueError(f"{where}: missing tensor {missing[0]!r} (expected shape "
                         f"{list(expected[missing[0]])}); missing: {missing}")
    unexpected = sorted(k for k in tensors if k not in expected)
    if unexpected:
        raise ValueError(f"{where}: unexpected tensor {unexpected[0]!r} (shape "
                         f"{list(tensors[unexpected[0]].shape)}); unexpected: {unexpected}")
    for k, shape in expected.items():
        if k not in tensors:
            continue
        a = np.asarray(tensors[k])
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{where}: tensor {k!r} has shape {list(a.shape)}, expected "
                             f"{list(shape)}")
        if not np.all(np.isfinite(a.astype(np.float32))):
            raise ValueError(f"{where}: tensor {k!r} has non-finite values (corrupt checkpoint?)")


# -- configs -------------------------------------------------------------------


def eagle_reference_config(cfg: eagle.EagleConfig) -> dict:
    """EAGLE-1's config.json: the layer as a one-layer Llama/Qwen2 config, "bias" (the
    FC's) and "qkv_bias" (read by the reference's attention)."""
    hf = config_lib.to_hf_config(cfg.layer)
    hf.update(bias=True, qkv_bias=cfg.qkv_bias, tie_word_embeddings=False, rope_scaling=None)
    return hf


def eagle_config_from_reference(hf: Mapping) -> tuple[eagle.EagleConfig, bool]:
    """(EagleConfig, whether the FC has a bias) of an EAGLE-1 config.json."""
    if hf.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"an EAGLE-1 head has one layer; the config has num_hidden_layers "
                         f"{hf.get('num_hidden_layers')}")
    mc = config_lib.from_hf_config(hf)
    cfg = eagle.EagleConfig.for_target(mc)
    if "qkv_bias" in hf:
        cfg = dataclasses.replace(cfg, qkv_bias=bool(hf["qkv_bias"]))
    return cfg, bool(hf.get("bias", True))


def medusa_reference_config(cfg: medusa.MedusaConfig, base: str) -> dict:
    return {"medusa_num_heads": cfg.num_heads, "medusa_num_layers": 1,
            "base_model_name_or_path": base, "hidden_size": cfg.dim,
            "vocab_size": cfg.vocab_size}


# -- export / import ---------------------------------------------------------------


def export_head(head_dir_or_name, out_dir, *, target=None) -> Path:
    """Writes the head's reference checkpoint (model.safetensors + config.json) to out_dir.

    Args:
      head_dir_or_name: a head asset (`assets.head_dir`).
      out_dir: the directory to write; an existing one is replaced only if empty or
        a previous export.
      target: the loaded target `(cfg, params)`, optional: checked against the head's
        target identity; EAGLE then also exports the embedding, Medusa heads on the
        frozen LM head take it from there if the asset has no saved "lm_head".

    Raises:
      ValueError: another target, a kind without a reference layout, a truncated
        vocabulary, an EAGLE head with an input norm, a Medusa head on the frozen
        LM head without that head.
    """
    identity = None
    if target is not None:
        identity = assets.target_identity("the given target", *target)
    meta, params = assets.load_head(head_dir_or_name, identity)
    kind = meta["kind"]
    if kind not in KINDS:
        raise ValueError(f"no reference layout for {kind!r} heads; exportable kinds: {KINDS}")
    if meta["config"].get("draft_vocab") or "vocab_ids" in params:
        raise ValueError(
            f"the {kind} head scores a truncated draft vocabulary ({meta['config']['draft_vocab']}"
            f" tokens, FR-Spec vocab_ids), which the reference {kind} layout cannot express"
            + (" (EAGLE-1 has no d2t map; that is EAGLE-3's)" if kind == "eagle" else "")
            + "; train it with draft_vocab=0 to export")
    if kind == "eagle":
        cfg = eagle.EagleConfig(**meta["config"])
        tensors = eagle_to_reference(cfg, params, None if target is None else target[1]["embed"])
        hf = eagle_reference_config(cfg)
        hf["torch_dtype"] = str(tensors["fc.weight"].dtype)
    else:
        cfg = medusa.MedusaConfig(**meta["config"])
        lm_head = None
        if not cfg.own_head:
            lm_head = params.get("lm_head")
            if lm_head is None and target is None:
                raise ValueError("the Medusa heads share the target's frozen LM head, which the "
                                 "asset does not hold: pass the target to copy it into each head")
            if lm_head is None:
                lm_head = heads.target_head(*target)
        tensors = medusa_to_reference(cfg, params, lm_head)
        hf = medusa_reference_config(cfg, meta["target"]["name"])
        hf["torch_dtype"] = str(tensors["medusa_head.0.0.linear.weight"].dtype)
    hf[SPECJAX_KEY] = {"format": FORMAT, "kind": kind, "config": meta["config"],
                       "target": meta["target"], "training": meta.get("training", {})}
    return _write_atomically(Path(out_dir), tensors, hf)


def _write_atomically(out: Path, tensors: dict, hf: dict) -> Path:
    if out.exists() and any(out.iterdir()) and not _is_export(out):
        raise ValueError(f"{out} exists and is not a specjax export: not replacing it")
    with atomic_directory(out, replace=True) as tmp:
        hf_io.write_safetensors(tensors.items(), tmp)
        hf_io.write_hf_config(hf, tmp)
    return out


def _is_export(d: Path) -> bool:
    try:
        return SPECJAX_KEY in json.loads((d / hf_io.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def read_reference(ref_dir) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, {name: array}) of a reference checkpoint directory; ValueError for
    an unreadable safetensors file."""
    hf = hf_io.read_hf_config(ref_dir)
    files = hf_io.safetensors_files(ref_dir)
    try:
        lazy = hf_io.LazyTensors(files)
        return hf, {k: lazy[k] for k in lazy}
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"{ref_dir}: unreadable safetensors weights ({e})") from e


def import_head(ref_dir, name_or_out, target_identity: dict, kind: str) -> Path:
    """Reads a reference checkpoint (EAGLE-1 or Medusa-1, see the module docstring) into a
    head asset saved as `name_or_out` (`assets.save_head`) for the target `target_identity`.

    Raises:
      ValueError: an unknown kind, a config for another target (hidden size,
        vocabulary, or the export's recorded target identity), missing, unexpected,
        misshapen or corrupt tensors.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; importable kinds: {KINDS}")
    ref_dir = Path(ref_dir)
    hf, tensors = read_reference(ref_dir)
    spec = hf.get(SPECJAX_KEY) or {}
    if spec and spec.get("kind") != kind:
        raise ValueError(f"{ref_dir} holds a {spec.get('kind')!r} head, not {kind!r}")
    if spec.get("target"):
        assets.check_target(spec["target"], target_identity, f"the head exported to {ref_dir}")
    D, V = target_identity["dim"], target_identity["vocab_size"]
    got = (hf.get("hidden_size", D), hf.get("vocab_size", V))
    if got != (D, V):
        raise ValueError(f"{ref_dir}: the config is for hidden size {got[0]}, vocabulary "
                         f"{got[1]}; the target {target_identity.get('name')!r} has {D}, {V}")
    if kind == "eagle":
        cfg, fc_bias = eagle_config_from_reference(hf)
        check_tensors(tensors, eagle_tensor_shapes(cfg, fc_bias, embedding=True), ref_dir,
                      optional=("embed_tokens.weight",))
        params = eagle_from_reference(cfg, tensors)
    else:
        tensors = {k if k.startswith("medusa_head.") else f"medusa_head.{k}": v
                   for k, v in tensors.items()}
        if hf.get("medusa_num_layers", 1) != 1:
            raise ValueError(f"{ref_dir}: medusa_num_layers {hf['medusa_num_layers']}; specjax's "
                             "Medusa heads have one ResBlock")
        if "medusa_num_heads" not in hf:
            raise ValueError(f"{ref_dir}: config.json has no medusa_num_heads")
        K = int(hf["medusa_num_heads"])
        lm = [np.asarray(tensors.get(f"medusa_head.{i}.1.weight")) for i in range(K)]
        own = spec.get("config", {}).get(
            "own_head", not all(np.array_equal(h, lm[0]) for h in lm))
        cfg = medusa.MedusaConfig(dim=D, vocab_size=V, num_heads=K, own_head=bool(own))
        check_tensors(tensors, medusa_tensor_shapes(cfg), ref_dir)
        params = medusa_from_reference(cfg, tensors)
    training = {**spec.get("training", {}), "imported_from": str(ref_dir)}
    return assets.save_head(name_or_out, kind, cfg, params, target_identity, training)

"""Exporting heads to their reference checkpoint layouts and back (`training.export`): the
layout is pinned tensor by tensor, the exported EAGLE weights compute our layer the
PyTorch way, a round trip keeps the params and the drafts, and bad checkpoints are
refused with the tensor named."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from specjax import decode
from specjax.bench import registry
from specjax.drafters import eagle, heads, medusa
from specjax.models.params import init_params
from specjax.training import assets, export
from tests.drafters.conftest import TINY

PROMPTS = [[5, 6, 7, 5, 6], [9, 2]]


@pytest.fixture(scope="module")
def target():
    """(cfg, params, identity) of the tiny target."""
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    return TINY, params, assets.target_identity("tiny", TINY, params)


def _random(tree, seed):
    """Random values in the shapes of `tree` (norms and biases made non-trivial)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [np.asarray(0.3 * jax.random.normal(k, x.shape))
                                        for k, x in zip(keys, leaves)])


def _eagle_asset(tmp_path, target, name="eagle", **kw):
    cfg, params, ident = target
    ecfg = eagle.EagleConfig.for_target(cfg, **kw)
    p = _random(eagle.init_params(ecfg, jax.random.key(1)), 1)
    if ecfg.draft_vocab:
        p["vocab_ids"] = np.arange(ecfg.draft_vocab, dtype=np.int32)
    return ecfg, assets.save_head(tmp_path / name, "eagle", ecfg, p, ident, {"steps": 7})


def _medusa_asset(tmp_path, target, name="medusa", own_head=False, draft_vocab=0):
    """A Medusa asset as training saves it: the trained weights and the frozen lm_head."""
    cfg, params, ident = target
    mcfg = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=3,
                               own_head=own_head, draft_vocab=draft_vocab)
    ids = np.arange(draft_vocab, dtype=np.int32) if draft_vocab else None
    frozen = medusa.frozen_params(mcfg, heads.target_head(cfg, params), ids)
    p = medusa.init_params(mcfg, jax.random.key(0), frozen)
    p = {**_random(p, 2), **{k: np.asarray(v) for k, v in frozen.items()}}
    return mcfg, assets.save_head(tmp_path / name, "medusa", mcfg, p, ident)


def _same(a: dict, b: dict):
    fa, fb = assets.flatten(a), assets.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _generate(target, name, head):
    """Greedy tokens and acceptance of the registry's method `name` with a head asset."""
    cfg, params, _ = target
    ctx = registry.BuildContext(target_cfg=cfg, target_params=params, max_new_tokens=10,
                                sampling=registry.Sampling(), eos_ids=(),
                                args={name: {"head": str(head)}})
    built = registry.get(name).method(ctx)
    return decode.speculative_generate(params, cfg, PROMPTS, method=built.method,
                                       draft_params=built.draft_params, max_new_tokens=10)


# -- the pinned layouts --------------------------------------------------------------


TINY_EAGLE = {  # TINY: D 32, V 50, 4 heads / 2 KV heads of 8, F 64
    "fc.weight": (32, 64), "fc.bias": (32,),
    "layers.0.self_attn.q_proj.weight": (32, 32), "layers.0.self_attn.k_proj.weight": (16, 32),
    "layers.0.self_attn.v_proj.weight": (16, 32), "layers.0.self_attn.o_proj.weight": (32, 32),
    "layers.0.post_attention_layernorm.weight": (32,),
    "layers.0.mlp.gate_proj.weight": (64, 32), "layers.0.mlp.up_proj.weight": (64, 32),
    "layers.0.mlp.down_proj.weight": (32, 64),
}
TINY_MEDUSA = {f"medusa_head.{i}.{n}": s for i in range(3) for n, s in [
    ("0.linear.weight", (32, 32)), ("0.linear.bias", (32,)), ("1.weight", (50, 32))]}


def _shapes(d):
    return {k: tuple(v.shape) for k, v in load_file(str(d / "model.safetensors")).items()}


def test_the_eagle_layout_and_config_are_eagle1s(tmp_path, target):
    cfg, params, ident = target
    ecfg, head = _eagle_asset(tmp_path, target)
    out = export.export_head(head, tmp_path / "ref", target=(cfg, params))
    assert _shapes(out) == {**TINY_EAGLE, "embed_tokens.weight": (50, 32)}
    hf = json.loads((out / "config.json").read_text())
    assert {k: hf[k] for k in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size",
                               "intermediate_size", "num_attention_heads",
                               "num_key_value_heads", "head_dim", "bias", "qkv_bias")} == {
        "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 32, "vocab_size": 50,
        "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "bias": True, "qkv_bias": False}
    assert hf["specjax"]["target"] == ident and hf["specjax"]["kind"] == "eagle"
    np.testing.assert_array_equal(load_file(str(out / "model.safetensors"))
                                  ["embed_tokens.weight"], params["embed"])
    # without the target: no embedding (engines share the target's); q/k/v biases
    qcfg = eagle.EagleConfig(**{**ecfg.__dict__, "qkv_bias": True})
    assets.save_head(tmp_path / "qwen", "eagle", qcfg,
                     _random(eagle.init_params(qcfg, jax.random.key(1)), 1), ident)
    out = export.export_head(tmp_path / "qwen", tmp_path / "ref_q")
    assert _shapes(out) == {**TINY_EAGLE, "layers.0.self_attn.q_proj.bias": (32,),
                            "layers.0.self_attn.k_proj.bias": (16,),
                            "layers.0.self_attn.v_proj.bias": (16,)}


def test_the_medusa_layout_and_config_are_medusas(tmp_path, target):
    cfg, params, _ = target
    _, head = _medusa_asset(tmp_path, target)
    out = export.export_head(head, tmp_path / "ref")
    assert _shapes(out) == TINY_MEDUSA
    hf = json.loads((out / "config.json").read_text())
    assert (hf["medusa_num_heads"], hf["medusa_num_layers"], hf["base_model_name_or_path"],
            hf["hidden_size"], hf["vocab_size"]) == (3, 1, "tiny", 32, 50)
    t = load_file(str(out / "model.safetensors"))
    for i in range(3):  # the shared frozen head, copied into each head
        np.testing.assert_array_equal(t[f"medusa_head.{i}.1.weight"],
                                      np.asarray(heads.target_head(cfg, params)).T)


def test_exported_eagle_weights_compute_our_layer_the_pytorch_way(tmp_path, target):
    """EAGLE-1's forward in numpy on the exported tensors (x @ W.T + b, [emb; feature],
    rotate_half RoPE, GQA, no input norm) equals our teacher-forced layer."""
    cfg, params, _ = target
    ecfg, head = _eagle_asset(tmp_path, target)
    t = load_file(str(export.export_head(head, tmp_path / "ref", target=(cfg, params))
                      / "model.safetensors"))
    _, ours = assets.load_head(head)
    rng = np.random.default_rng(0)
    L, H, N, K = 7, ecfg.head_dim, ecfg.num_heads, ecfg.num_kv_heads
    tokens = rng.integers(0, cfg.vocab_size, L)
    hidden = rng.normal(size=(L, cfg.dim)).astype(np.float32)

    def linear(x, name):
        return x @ t[name].T + (t[name[:-6] + "bias"] if name[:-6] + "bias" in t else 0)

    x = np.concatenate([t["embed_tokens.weight"][tokens[1:]], hidden[:-1]], axis=-1)
    x = linear(x, "fc.weight")  # [T, D]
    T = L - 1
    got_fc = eagle.fuse({**ours, "embed": params["embed"]}, hidden[None, :-1], tokens[None, 1:])
    np.testing.assert_allclose(got_fc[0], x, rtol=1e-5, atol=1e-5)

    a = "layers.0.self_attn."
    inv = 1.0 / ecfg.rope_theta ** (np.arange(0, H, 2) / H)
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(v):  # [T, heads, H]
        half = np.concatenate([-v[..., H // 2:], v[..., :H // 2]], -1)
        return v * cos[:, None] + half * sin[:, None]

    q = rope(linear(x, a + "q_proj.weight").reshape(T, N, H))
    k = np.repeat(rope(linear(x, a + "k_proj.weight").reshape(T, K, H)), N // K, axis=1)
    v = np.repeat(linear(x, a + "v_proj.weight").reshape(T, K, H), N // K, axis=1)
    s = np.einsum("tnh,snh->nts", q, k) / np.sqrt(H) + np.where(np.tri(T), 0, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = x + linear(np.einsum("nts,snh->tnh", p, v).reshape(T, N * H), a + "o_proj.weight")
    n = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + ecfg.norm_eps)
    n = n * t["layers.0.post_attention_layernorm.weight"]
    m = "layers.0.mlp."
    g = linear(n, m + "gate_proj.weight")
    want = h + linear(g / (1 + np.exp(-g)) * linear(n, m + "up_proj.weight"),
                      m + "down_proj.weight")
    got = eagle.teacher_forced({**ours, "embed": params["embed"]}, ecfg, hidden[None],
                               tokens[None], np.ones((1, L), np.int32))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("with_target", [True, False])
def test_an_eagle_round_trip_keeps_params_config_and_drafts(tmp_path, target, with_target):
    cfg, params, ident = target
    ecfg, head = _eagle_asset(tmp_path, target)
    ref = export.export_head(head, tmp_path / "ref",
                             target=(cfg, params) if with_target else None)
    back = export.import_head(ref, tmp_path / "back", ident, "eagle")
    meta0, p0 = assets.load_head(head, ident)
    meta1, p1 = assets.load_head(back, ident)
    assert meta1["config"] == meta0["config"] and meta1["target"] == ident
    assert meta1["training"]["steps"] == 7 and meta1["training"]["imported_from"] == str(ref)
    _same(p0, p1)
    want = decode.autoregressive_generate(params, cfg, PROMPTS, max_new_tokens=10).tokens
    for name in ("eagle", "eagle2"):
        a, b = _generate(target, name, head), _generate(target, name, back)
        assert a.tokens == b.tokens == want, name
        np.testing.assert_array_equal(a.accept_hist, b.accept_hist)
    # exporting again replaces the previous export
    assert export.export_head(back, ref) == ref


@pytest.mark.parametrize("own_head", [False, True])
def test_a_medusa_round_trip_keeps_params_and_drafts(tmp_path, target, own_head):
    cfg, params, ident = target
    _, head = _medusa_asset(tmp_path, target, own_head=own_head)
    back = export.import_head(export.export_head(head, tmp_path / "ref"), tmp_path / "back",
                              ident, "medusa")
    meta0, p0 = assets.load_head(head, ident)
    meta1, p1 = assets.load_head(back, ident)
    assert meta1["config"] == meta0["config"]
    if own_head:  # the asset's frozen target head is unused with own heads: not exported
        p0.pop("lm_head")
    _same(p0, p1)
    a, b = _generate(target, "medusa", head), _generate(target, "medusa", back)
    assert a.tokens == b.tokens == decode.autoregressive_generate(
        params, cfg, PROMPTS, max_new_tokens=10).tokens
    np.testing.assert_array_equal(a.accept_hist, b.accept_hist)


def test_medusas_own_training_output_imports(tmp_path, target):
    """The reference training script's `medusa_lm_head.safetensors` (names without the
    medusa_head. prefix) and a plain config: equal LM heads become the shared lm_head."""
    _, _, ident = target
    _, head = _medusa_asset(tmp_path, target)
    ref = export.export_head(head, tmp_path / "ref")
    t = load_file(str(ref / "model.safetensors"))
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file({k[len("medusa_head."):]: v for k, v in t.items()},
              str(plain / "medusa_lm_head.safetensors"))
    (plain / "config.json").write_text(json.dumps(
        {"medusa_num_heads": 3, "medusa_num_layers": 1, "base_model_name_or_path": "x"}))
    meta, p = assets.load_head(export.import_head(plain, tmp_path / "back", ident, "medusa"))
    assert meta["config"]["own_head"] is False
    _same(assets.load_head(head)[1], p)


# -- refusals ------------------------------------------------------------------------


def _rewrite(ref, change):
    t = load_file(str(ref / "model.safetensors"))
    change(t)
    save_file(t, str(ref / "model.safetensors"))


def test_bad_checkpoints_are_refused_naming_the_tensor(tmp_path, target):
    cfg, params, ident = target
    _, head = _eagle_asset(tmp_path, target)
    ref = export.export_head(head, tmp_path / "ref")
    good = (ref / "model.safetensors").read_bytes()

    def refused(change, match):
        (ref / "model.safetensors").write_bytes(good)
        _rewrite(ref, change)
        with pytest.raises(ValueError, match=match):
            export.import_head(ref, tmp_path / "back", ident, "eagle")
        assert not (tmp_path / "back").exists()

    refused(lambda t: t.pop("layers.0.mlp.up_proj.weight"),
            r"missing tensor 'layers.0.mlp.up_proj.weight' \(expected shape \[64, 32\]\)")
    refused(lambda t: t.update({"fc.weight": np.zeros((32, 63), np.float32)}),
            r"tensor 'fc.weight' has shape \[32, 63\], expected \[32, 64\]")
    refused(lambda t: t.update({"layers.0.input_layernorm.weight": np.ones(32, np.float32)}),
            r"unexpected tensor 'layers.0.input_layernorm.weight'")
    refused(lambda t: t.update({"fc.bias": np.full(32, np.nan, np.float32)}),
            r"tensor 'fc.bias' has non-finite values")
    (ref / "model.safetensors").write_bytes(good[:len(good) // 2])  # truncated file
    with pytest.raises(ValueError, match="unreadable safetensors"):
        export.import_head(ref, tmp_path / "back", ident, "eagle")
    (ref / "model.safetensors").write_bytes(good)
    with pytest.raises(ValueError, match="holds a 'eagle' head, not 'medusa'"):
        export.import_head(ref, tmp_path / "back", ident, "medusa")


def test_heads_for_another_target_are_refused(tmp_path, target):
    cfg, params, ident = target
    other = init_params(TINY, jax.random.key(1), scale=0.3)
    _, head = _eagle_asset(tmp_path, target)
    with pytest.raises(ValueError, match="is for target 'tiny'.*fingerprint"):
        export.export_head(head, tmp_path / "ref", target=(cfg, other))
    assert not (tmp_path / "ref").exists()
    ref = export.export_head(head, tmp_path / "ref")
    with pytest.raises(ValueError, match="is for target 'tiny'.*fingerprint"):
        export.import_head(ref, tmp_path / "back", assets.target_identity("o", cfg, other),
                           "eagle")
    hf = json.loads((ref / "config.json").read_text())  # a foreign export: no identity
    del hf["specjax"]
    (ref / "config.json").write_text(json.dumps(hf))
    wide = {**ident, "dim": 64}
    with pytest.raises(ValueError, match="hidden size 32, vocabulary 50; the target 'tiny' "
                                         "has 64, 50"):
        export.import_head(ref, tmp_path / "back", wide, "eagle")


def test_heads_without_a_reference_equivalent_are_refused(tmp_path, target):
    cfg, params, _ = target
    _, head = _eagle_asset(tmp_path, target, "trunc", draft_vocab=16)
    with pytest.raises(ValueError, match="truncated draft vocabulary.*no d2t map"):
        export.export_head(head, tmp_path / "ref")
    _, head = _medusa_asset(tmp_path, target, "mtrunc", draft_vocab=16)
    with pytest.raises(ValueError, match="truncated draft vocabulary"):
        export.export_head(head, tmp_path / "ref", target=(cfg, params))
    _, head = _eagle_asset(tmp_path, target, "norm", input_norm=True)
    with pytest.raises(ValueError, match="input_norm=True.*no EAGLE-1 equivalent"):
        export.export_head(head, tmp_path / "ref")
    _, head = _medusa_asset(tmp_path, target, "nohead")
    meta, p = assets.load_head(head)
    p.pop("lm_head")
    assets.save_head(head, "medusa", meta["config"], p, meta["target"])
    with pytest.raises(ValueError, match="pass the target"):
        export.export_head(head, tmp_path / "ref")
    assert export.export_head(head, tmp_path / "ref", target=(cfg, params)).is_dir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a specjax export"):
        export.export_head(head, tmp_path / "mine", target=(cfg, params))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

"""GGUF reading: names, q/k un-permutation, dequantisation, config from metadata.

Tiny GGUF files are written with the `gguf` package's writer. Expected values
come from independent sources: the original arrays, llama.cpp's permutation
(copied from its converter), transformers' reverse permutation, `gguf`'s and
transformers' dequantisers, and transformers' own GGUF model loader.
"""

import gguf
import jax
import numpy as np
import pytest

from specjax.models import gguf_io
from specjax.models.config import ModelConfig, to_hf_config
from specjax.models.params import param_shapes, params_to_hf_tensors

Q = gguf.GGMLQuantizationType

LLAMA = ModelConfig(arch="llama", vocab_size=64, dim=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=16, ffn_dim=96, rope_theta=5e4, norm_eps=1e-5)
QWEN = ModelConfig(arch="qwen2", vocab_size=96, dim=64, num_layers=2, num_heads=4,
                   num_kv_heads=1, head_dim=16, ffn_dim=64, rope_theta=1e6, norm_eps=1e-6,
                   qkv_bias=True, tie_embeddings=True)


def hf_tensors(cfg, seed=0):
    """Random HF-named float32 tensors for `cfg` (numpy; no jax compilation)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s).astype(np.float32), param_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    return params_to_hf_tensors(cfg, params)


def llama_cpp_permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def as_llama_cpp(cfg, tensors):
    """HF tensors with q/k rows permuted the way llama.cpp's converter writes them."""
    out = {}
    for name, w in tensors.items():
        if ".q_proj." in name:
            w = llama_cpp_permute(w, cfg.num_heads, cfg.num_heads)
        elif ".k_proj." in name:
            w = llama_cpp_permute(w, cfg.num_heads, cfg.num_kv_heads)
        out[name] = w
    return out


def by_kind(kinds):
    """qtype function: 1-D tensors F32, matrices by substring -> type."""
    def qtype(name, w):
        if w.ndim == 1:
            return Q.F32
        for key, t in kinds.items():
            if key in name:
                return t
        return Q.F32
    return qtype


LLAMA_KINDS = {"q_proj": Q.Q8_0, "k_proj": Q.Q4_0, "v_proj": Q.F16, "o_proj": Q.Q4_1,
               "gate_proj": Q.Q5_0, "up_proj": Q.Q8_0, "down_proj": Q.F16,
               "embed_tokens": Q.Q8_0, "lm_head": Q.F16}


def expected_after_storage(cfg, name, w, t):
    """What a correct loader must return for HF tensor `w` stored as type `t`."""
    stored = as_llama_cpp(cfg, {name: w})[name] if cfg.arch == "llama" else w
    roundtrip = gguf.quants.dequantize(gguf.quants.quantize(stored.astype(np.float32), t), t)
    roundtrip = np.asarray(roundtrip, np.float32).reshape(w.shape)
    if cfg.arch != "llama":
        return roundtrip
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor()
    if ".q_proj." in name:
        return proc._reverse_permute_weights(roundtrip, cfg.num_heads, cfg.num_heads)
    if ".k_proj." in name:
        return proc._reverse_permute_weights(roundtrip, cfg.num_heads, cfg.num_kv_heads)
    return roundtrip


def test_name_mapping_agrees_with_gguf_package():
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3)
    for hf_name in hf_tensors(LLAMA.replace(num_layers=3, qkv_bias=True)):
        base, suffix = hf_name.rsplit(".", 1)
        want = f"{name_map.get_name(base)}.{suffix}"
        assert gguf_io.gguf_tensor_name(hf_name) == want
        assert gguf_io.hf_tensor_name(want) == hf_name


def test_unknown_tensor_name_is_an_error():
    with pytest.raises(ValueError, match="rope_freqs.weight"):
        gguf_io.hf_tensor_name("rope_freqs.weight")


@pytest.mark.parametrize("n_head,n_kv", [(4, 4), (4, 2), (6, 1)])
def test_permutation_matches_llama_cpp_and_transformers(n_head, n_kv):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    head_dim, d = 8, 12
    q = rng.normal(size=(n_head * head_dim, d))
    k = rng.normal(size=(n_kv * head_dim, d))
    bias = rng.normal(size=(n_kv * head_dim,))
    pq, pk = llama_cpp_permute(q, n_head, n_head), llama_cpp_permute(k, n_head, n_kv)
    assert not np.array_equal(pq, q)  # the test would be vacuous otherwise
    np.testing.assert_array_equal(gguf_io.permute_qk(q, n_head), pq)
    np.testing.assert_array_equal(gguf_io.unpermute_qk(pq, n_head), q)
    np.testing.assert_array_equal(gguf_io.unpermute_qk(pk, n_kv), k)
    np.testing.assert_array_equal(
        gguf_io.unpermute_qk(pk, n_kv), LlamaTensorProcessor()._reverse_permute_weights(pk, n_head, n_kv))
    np.testing.assert_array_equal(gguf_io.unpermute_qk(gguf_io.permute_qk(bias, n_kv), n_kv), bias)


def test_llama_float_tensors_exact_and_unpermuted(tmp_path):
    tensors = hf_tensors(LLAMA)
    path = gguf_io.write_gguf(tmp_path / "m.gguf", to_hf_config(LLAMA), as_llama_cpp(LLAMA, tensors),
                              qtype=Q.F32, permute=False)
    hf, loaded = gguf_io.load_gguf_hf(path)
    assert set(loaded) == set(tensors)
    for name, w in tensors.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], w, err_msg=name)


def test_llama_mixed_quantised_tensors(tmp_path):
    tensors = hf_tensors(LLAMA)
    qtype = by_kind(LLAMA_KINDS)
    path = gguf_io.write_gguf(tmp_path / "m.gguf", to_hf_config(LLAMA), as_llama_cpp(LLAMA, tensors),
                              qtype=qtype, permute=False)
    reader = gguf_io.open_gguf(path)
    stored = {t.name: t.tensor_type for t in reader.tensors}
    assert {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.F16, Q.F32} <= set(stored.values())
    _, loaded = gguf_io.load_gguf_hf(path)
    for name, w in tensors.items():
        t = qtype(name, w)
        np.testing.assert_array_equal(loaded[name], expected_after_storage(LLAMA, name, w, t), err_msg=name)
        # and close to the original within the type's quantisation error
        tol = {Q.F32: 0, Q.F16: 2e-3, Q.Q8_0: 0.02, Q.Q5_0: 0.1, Q.Q4_1: 0.2, Q.Q4_0: 0.25}[t]
        np.testing.assert_allclose(loaded[name], w, atol=tol * np.abs(w).max() + 1e-7, err_msg=name)


def test_load_gguf_gives_config_and_params(tmp_path):
    tensors = hf_tensors(LLAMA)
    path = gguf_io.write_gguf(tmp_path / "m.gguf", to_hf_config(LLAMA), tensors)
    cfg, params = gguf_io.load_gguf(path)
    assert cfg == LLAMA
    np.testing.assert_array_equal(params_to_hf_tensors(cfg, params)["model.layers.1.self_attn.k_proj.weight"],
                                  tensors["model.layers.1.self_attn.k_proj.weight"])
    cfg16, params16 = gguf_io.load_gguf(path, dtype="bfloat16")
    assert cfg16.dtype == "bfloat16" and params16["layers"][0]["wq"].dtype.name == "bfloat16"


def test_qwen2_is_not_permuted_and_ties_embeddings(tmp_path):
    tensors = hf_tensors(QWEN)
    qtype = by_kind({"q_proj": Q.Q8_0, "k_proj": Q.Q5_0, "embed_tokens": Q.F16})
    path = gguf_io.write_gguf(tmp_path / "q.gguf", to_hf_config(QWEN), tensors, qtype=qtype)
    names = {t.name for t in gguf_io.open_gguf(path).tensors}
    assert "output.weight" not in names and "blk.0.attn_q.bias" in names
    cfg, params = gguf_io.load_gguf(path)
    assert cfg == QWEN and "lm_head" not in params
    back = params_to_hf_tensors(cfg, params)
    for name, w in tensors.items():
        np.testing.assert_array_equal(back[name], expected_after_storage(QWEN, name, w, qtype(name, w)),
                                      err_msg=name)


def _random_k_blocks(t, rows, cols, rng):
    """Random bytes of a K-quant tensor with sane fp16 scales (no inf/nan)."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[t]
    data = rng.integers(0, 256, size=(rows, cols // block_elems, block_bytes), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, size=(rows, cols // block_elems, 2)).astype(np.float16)
    if t == Q.Q6_K:  # ql, qh, scales, d
        data[..., -2:] = scales[..., :1].view(np.uint8)
    else:  # Q4_K / Q5_K / Q2_K: d, dmin first
        data[..., :4] = scales.view(np.uint8).reshape(rows, -1, 4)
    return data.reshape(rows, -1)


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q6_K])
def test_k_quants_match_independent_dequantiser(tmp_path, t):
    torch = pytest.importorskip("torch")
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize

    rng = np.random.default_rng(1)
    rows, cols = 8, 512
    raw = _random_k_blocks(t, rows, cols, rng)
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=t)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    tensor = gguf_io.open_gguf(tmp_path / "k.gguf").tensors[0]
    ours = gguf_io.dequantize(tensor)
    assert ours.shape == (rows, cols) and np.isfinite(ours).all()
    ref = torch_dequantize(torch.from_numpy(raw.reshape(-1).copy()), int(t)).numpy().reshape(rows, cols)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_config_from_metadata(tmp_path):
    path = gguf_io.write_gguf(tmp_path / "m.gguf", to_hf_config(LLAMA), hf_tensors(LLAMA))
    reader = gguf_io.open_gguf(path)
    hf = gguf_io.hf_config_from_metadata(gguf_io.read_metadata(reader), gguf_io.tensor_shapes(reader))
    assert hf["num_hidden_layers"] == 2 and hf["num_key_value_heads"] == 2 and hf["head_dim"] == 16
    assert hf["vocab_size"] == 64 and hf["rope_theta"] == 5e4 and hf["tie_word_embeddings"] is False
    assert gguf_io.tensor_shapes(reader)["blk.0.ffn_down.weight"] == (64, 96)  # HF [out, in]


def test_unsupported_architecture_is_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ValueError, match="gpt2"):
        gguf_io.load_gguf(tmp_path / "g.gguf")


def test_not_a_gguf_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        gguf_io.open_gguf(bad)
    good = gguf_io.write_gguf(tmp_path / "m.gguf", to_hf_config(LLAMA), hf_tensors(LLAMA))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-5000])
    with pytest.raises(ValueError):
        gguf_io.load_gguf(cut)
    with pytest.raises(FileNotFoundError):
        gguf_io.open_gguf(tmp_path / "missing.gguf")


def test_matches_transformers_gguf_loader(tmp_path):
    """transformers' own GGUF path (torch) is an independent oracle for names,
    un-permutation, dequantisation and config."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    for cfg in (LLAMA, QWEN):
        tensors = hf_tensors(cfg)
        name = f"{cfg.arch}.gguf"
        gguf_io.write_gguf(tmp_path / name, to_hf_config(cfg), tensors,
                           qtype=by_kind({"q_proj": Q.Q8_0, "k_proj": Q.Q4_0, "up_proj": Q.Q4_1}))
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=name, dtype=torch.float32)
        _, ours = gguf_io.load_gguf_hf(tmp_path / name)
        ref = model.state_dict()
        if cfg.tie_embeddings:
            ref.pop("lm_head.weight")
        assert set(ours) == set(ref)
        for k, v in ref.items():
            np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)

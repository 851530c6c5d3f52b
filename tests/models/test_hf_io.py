"""HF checkpoint directories: tiny random transformers models written by the
test itself (torch), read back with specjax, and specjax's writer read by
transformers."""

import json

import jax
import numpy as np
import pytest

from specjax.models import hf_io
from specjax.models.config import ModelConfig
from specjax.models.params import param_shapes, params_to_hf_tensors

CFG = ModelConfig(arch="llama", vocab_size=80, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, ffn_dim=48, rope_theta=1e4, norm_eps=1e-5)


def random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def tiny_transformers_model(arch, tie, kv_heads):
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-6,
                  max_position_embeddings=128, tie_word_embeddings=tie)
    if arch == "llama":
        config = transformers.LlamaConfig(**common, attention_bias=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # norms are ones and biases zeros at init: make every tensor informative
        for p in model.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize("arch,tie,kv_heads", [("llama", False, 2), ("llama", True, 4),
                                               ("qwen2", True, 2), ("qwen2", False, 1)])
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_reads_transformers_checkpoint(tmp_path, arch, tie, kv_heads, shard):
    model = tiny_transformers_model(arch, tie, kv_heads)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kw)
    if shard:
        assert (tmp_path / hf_io.INDEX_FILE).is_file()
    cfg, params = hf_io.load_hf_dir(tmp_path)
    assert (cfg.arch, cfg.tie_embeddings, cfg.num_kv_heads, cfg.qkv_bias) == (arch, tie, kv_heads, arch == "qwen2")
    assert (cfg.vocab_size, cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.head_dim) == (96, 32, 40, 2, 8)
    ours = params_to_hf_tensors(cfg, params)
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if tie:
        ref.pop("lm_head.weight")
    assert set(ours) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)


def test_save_and_load_roundtrip(tmp_path):
    params = random_params(CFG)
    hf_io.save_hf_dir(CFG, params, tmp_path / "one")
    hf_io.save_hf_dir(CFG, params, tmp_path / "many", max_shard_bytes=20_000)
    shards = hf_io.safetensors_files(tmp_path / "many")
    assert len(shards) > 2 and (tmp_path / "many" / hf_io.INDEX_FILE).is_file()
    for d in ("one", "many"):
        cfg, back = hf_io.load_hf_dir(tmp_path / d)
        assert cfg == CFG
        jax.tree.map(np.testing.assert_array_equal, back, params)
    assert not list((tmp_path / "many").glob(".shard-*"))  # temporary names are gone


def test_load_casts_to_bfloat16(tmp_path):
    params = random_params(CFG)
    hf_io.save_hf_dir(CFG, params, tmp_path)
    cfg, back = hf_io.load_hf_dir(tmp_path, dtype="bfloat16")
    assert cfg.dtype == "bfloat16"
    assert back["layers"][0]["wq"].dtype == hf_io.np_dtype("bfloat16")
    np.testing.assert_array_equal(back["embed"], params["embed"].astype(hf_io.np_dtype("bfloat16")))


def test_transformers_reads_our_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    cfg = CFG.replace(arch="qwen2", qkv_bias=True, tie_embeddings=True)
    params = random_params(cfg)
    hf_io.save_hf_dir(cfg, params, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    sd = model.state_dict()
    for k, v in params_to_hf_tensors(cfg, params).items():
        np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)
    np.testing.assert_array_equal(sd["lm_head.weight"].numpy(), params["embed"])  # tied


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_io.load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"\.bin"):
        hf_io.safetensors_files(tmp_path)

    params = random_params(CFG)
    hf_io.save_hf_dir(CFG, params, tmp_path / "sharded", max_shard_bytes=20_000)
    victim = hf_io.safetensors_files(tmp_path / "sharded")[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        hf_io.load_hf_dir(tmp_path / "sharded")

    hf_io.save_hf_dir(CFG, params, tmp_path / "partial")
    tensors = dict(hf_io.load_hf_tensors(tmp_path / "partial"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    hf_io.write_safetensors(tensors.items(), tmp_path / "partial")
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        hf_io.load_hf_dir(tmp_path / "partial")

    cfg_file = tmp_path / "partial" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        hf_io.load_hf_dir(tmp_path / "partial")

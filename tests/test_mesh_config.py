"""Sharded runs from configs: `sharding.parse_mesh`, `models.params.place(..., mesh=)`,
`sharding.bytes_per_device`, and `experiments.run --config.mesh=...` on 8 fake CPU devices
giving the tokens of a one-device run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from specjax import sharding
from specjax.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
EIGHT_DEVICES = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                     JAX_PLATFORMS="cpu")


def test_parse_mesh():
    assert sharding.parse_mesh("") is None and sharding.parse_mesh(" ") is None
    assert sharding.parse_mesh_shape("data:2,model:4") == {"data": 2, "model": 4}
    assert sharding.parse_mesh_shape("model:4") == {"model": 4}
    mesh = sharding.parse_mesh("model:1")
    assert dict(mesh.shape) == {"data": 1, "model": 1}


@pytest.mark.parametrize("spec, match", [
    ("tensor:2", "unknown axis 'tensor'"),
    ("model:0", "positive integer, got '0'"),
    ("model:-2", "positive integer, got '-2'"),
    ("model:1.5", "positive integer, got '1.5'"),
    ("model:", "positive integer, got ''"),
    ("model", "not AXIS:SIZE"),
    ("model:2,model:2", "axis 'model' is given twice"),
])
def test_parse_mesh_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        sharding.parse_mesh(spec)


def test_parse_mesh_needs_the_devices():
    n = len(jax.devices())
    with pytest.raises(ValueError, match=rf"needs {8 * n} devices but jax.devices\(\) has {n}"
                       r".*XLA_FLAGS=--xla_force_host_platform_device_count"):
        sharding.parse_mesh(f"data:2,model:{4 * n}")


def test_dtype_auto():
    assert sharding.resolve_dtype("auto") == sharding.default_dtype() == (
        "float32" if jax.default_backend() == "cpu" else "bfloat16")
    assert sharding.resolve_dtype("bfloat16") == "bfloat16"
    assert sharding.resolve_dtype("float32") == "float32"


def test_bytes_per_device_hand_count():
    """V=64, D=16, L=2, N=4, K=2, H=4, F=32, untied, float32, mesh data:2 x model:4."""
    cfg = ModelConfig(arch="llama", vocab_size=64, dim=16, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=4, ffn_dim=32)
    mesh = {"data": 2, "model": 4}
    # embed [64,16] and lm_head [16,64]: vocab / 4; final norm [16] replicated
    top = 64 * 16 // 4 * 2 + 16
    # per layer: wq [16,16]/4, wk, wv [16,8]/4, wo [16,16]/4, gate/up [16,32]/4,
    # down [32,16]/4, two norms [16] replicated
    layer = (16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 32) // 4 + 2 * 16
    got = sharding.bytes_per_device(cfg, mesh, batch=4, max_len=10, dtype="float32")
    assert got["params"] == 4 * (top + 2 * layer)
    # k and v [L=2, B=4, S=10, K=2, H=4]: batch / 2; K=2 not divisible by 4: replicated
    assert got["kv_cache"] == 4 * 2 * (2 * (4 // 2) * 10 * 2 * 4)
    assert got["total"] == got["params"] + got["kv_cache"]
    # bfloat16 halves it; one device holds everything
    assert sharding.bytes_per_device(cfg, mesh, 4, 10, "bfloat16")["params"] == 2 * (
        top + 2 * layer)
    full = sharding.bytes_per_device(cfg, {}, 4, 10, "float32")
    from specjax.models.params import count_params, init_params
    assert full["params"] == 4 * count_params(init_params(cfg, jax.random.key(0)))
    assert full["kv_cache"] == 4 * 2 * 2 * 4 * 10 * 2 * 4


PLACE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from specjax import sharding
    from specjax.models import params as P
    from specjax.models.config import ModelConfig
    from specjax.models.layout import LayoutPlan
    assert len(jax.devices()) == 8, jax.devices()
    mesh = sharding.parse_mesh("data:2,model:4")
    checked = split_leaves = 0
    for cfg in [ModelConfig(arch="qwen2", vocab_size=64, dim=32, num_layers=2, num_heads=4,
                            num_kv_heads=4, head_dim=8, ffn_dim=256, qkv_bias=True),
                ModelConfig(arch="llama", vocab_size=64, dim=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, ffn_dim=64, tie_embeddings=True)]:
        params = P.init_params(cfg, jax.random.key(0))
        for layout in ["plain", "panels", LayoutPlan(body="plain", head=(2, 8))]:
            host = lambda: jax.tree.map(np.asarray, params)
            want_cfg, want = P.place(cfg, host(), layout)
            got_cfg, got = P.place(cfg, host(), layout, mesh=mesh)
            assert got_cfg == want_cfg
            assert jax.tree.structure(got) == jax.tree.structure(want)
            rules = sharding.param_shardings(
                cfg, mesh, shapes=jax.tree.map(lambda a: tuple(a.shape), want))
            for g, w, r in zip(jax.tree.leaves(got), jax.tree.leaves(want),
                               jax.tree.leaves(rules)):
                assert g.sharding == r, (g.sharding, r)
                np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
                split = int(np.prod([mesh.shape[m] for m in r.spec if m is not None]))
                assert all(s.data.size * split == g.size for s in g.addressable_shards)
                checked += 1
                split_leaves += split > 1
    print(checked, split_leaves)
""")


def test_place_on_a_mesh_loads_each_leaf_into_its_shards():
    out = subprocess.run([sys.executable, "-c", PLACE_SCRIPT], env=EIGHT_DEVICES,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    checked, split = map(int, out.stdout.split()[-2:])
    assert checked > 50 and split > 30


def _run_quickstart(workdir: Path, env: dict, *flags: str) -> dict:
    """`experiments.run` on the quickstart's tiny variant, cut to one prompt, 8 tokens,
    autoregressive + a draft-model chain (the target's first 10 layers)."""
    cmd = [sys.executable, "-m", "experiments.run", "--config=configs/quickstart.py:tiny",
           f"--workdir={workdir}", "--config.methods=autoregressive,sd_chain",
           "--config.max_new_tokens=8", "--config.prompts.spec_bench_categories=",
           "--config.layout=plain", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "records.jsonl").read_text().splitlines()]
    answers = {p.name: [json.loads(line)["choices"][0]["turns"]
                        for line in p.read_text().splitlines()]
               for p in sorted((workdir / "answers").iterdir())}
    return dict(tokens={(r["method"], r["question_id"]): r["tokens"] for r in records},
                answers=answers, results=json.loads((workdir / "results.json").read_text()))


@pytest.mark.slow
def test_run_with_a_mesh_gives_the_one_device_tokens(tmp_path):
    """THE user-facing path: `--config.mesh=data:2,model:4` on 8 fake CPU devices."""
    one = _run_quickstart(tmp_path / "one", dict(os.environ, JAX_PLATFORMS="cpu"))
    eight = _run_quickstart(tmp_path / "eight", EIGHT_DEVICES, "--config.mesh=data:2,model:4")
    assert len(one["tokens"]) == 2 and all(len(t) > 0 for t in one["tokens"].values())
    assert eight["tokens"] == one["tokens"]
    assert eight["answers"] == one["answers"]
    assert eight["results"]["mesh"] == {"data": 2, "model": 4}
    assert eight["results"]["devices"] == 8 and one["results"]["devices"] == 1
    assert one["results"]["mesh"] == {} and one["results"]["dtype"] == "float32"

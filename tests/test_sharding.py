"""The speculative loop on 8 fake CPU devices gives the same tokens as on one."""

import os
import subprocess
import sys
import textwrap

import jax
from jax.sharding import PartitionSpec

from specjax import sharding
from specjax.models.config import ModelConfig

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, json
    from specjax import decode, sharding, verify, trees
    from specjax.drafters.draft_model import DraftModel
    from specjax.models.config import ModelConfig
    from specjax.models.lm import DecoderLM
    from specjax.models.layout import LayoutPlan
    from specjax.models.params import convert, first_layers, init_params, panelize
    assert len(jax.devices()) == 8, jax.devices()
    cfg = ModelConfig(arch="qwen2", vocab_size=64, dim=32, num_layers=2, num_heads=4,
                      num_kv_heads=4, head_dim=8, ffn_dim=256, qkv_bias=True)
    params = init_params(cfg, jax.random.key(0), scale=0.3)
    dcfg, dparams = first_layers(cfg, params, 1)
    method = decode.Method(DraftModel(DecoderLM(dcfg), tuple(trees.kary_topology(2, 2).tolist()),
                                      "topk"), verify.greedy)
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    kw = dict(method=method, max_new_tokens=12)
    single = decode.speculative_generate(params, cfg, prompts, draft_params=dparams, **kw)
    mesh = sharding.make_mesh(data=2, model=4)
    sp = sharding.shard_params(params, cfg, mesh)
    spd = sharding.shard_params(dparams, dcfg, mesh)
    assert len(sp["layers"][0]["wq"].sharding.device_set) == 8
    with jax.set_mesh(mesh):
        sharded = decode.speculative_generate(sp, cfg, prompts, draft_params=spd, **kw)
    # the CPU panel layout (models.params.panelize), sharded by the same rules
    pp = sharding.shard_params(panelize(cfg, params), cfg, mesh)
    ppd = sharding.shard_params(panelize(dcfg, dparams), dcfg, mesh)
    assert len(pp["layers"][0]["w_up"].sharding.device_set) == 8
    with jax.set_mesh(mesh):
        panels = decode.speculative_generate(pp, cfg, prompts, draft_params=ppd, **kw)
    # a mixed layout (plain layers, both LM heads; models.layout)
    mcfg, mp = convert(cfg, params, LayoutPlan(body="plain", head=(2, 8)))
    mp = sharding.shard_params(mp, mcfg, mesh)
    assert mp["lm_head_panels"].ndim == 3 and mp["lm_head"].ndim == 2
    with jax.set_mesh(mesh):
        mixed = decode.speculative_generate(mp, mcfg, prompts, draft_params=spd, **kw)
    ar = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=12)
    print(json.dumps(dict(single=single.tokens, sharded=sharded.tokens, ar=ar.tokens,
                          panels=panels.tokens, mixed=mixed.tokens)))
""")


def test_sharded_run_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sharded"] == res["single"] == res["ar"] == res["panels"] == res["mixed"]


def test_indivisible_dims_are_replicated():
    spec = sharding.spec_for(("batch", "kv_heads"), (4, 3), {"data": 2, "model": 4})
    assert spec == PartitionSpec("data", None)
    cfg = ModelConfig(arch="llama", vocab_size=64, dim=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, ffn_dim=64)
    mesh = sharding.make_mesh(1, 1)
    sh = sharding.param_shardings(cfg, mesh)
    assert set(sh["layers"][0]) >= {"wq", "wk", "w_down"}
    assert isinstance(jax.tree.leaves(sh)[0], jax.sharding.NamedSharding)

"""The training loop (`specjax.training.trainer`): exact resume, data parallelism,
metrics, configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from specjax.drafters import mlp_speculator as ms
from specjax.training import data as data_lib
from specjax.training import trainer

CFG = ms.SpeculatorConfig(dim=8, vocab_size=13, n_predict=2, inner_dim=8)


def records(n=32, L=12, seed=0):
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(5).normal(size=(13, 8)).astype(np.float32)
    out = []
    for _ in range(n):
        t = rng.integers(0, 13, L).astype(np.int32)
        out.append({"tokens": t, "segments": np.ones(L, np.int32), "hidden": table[t]})
    return out


def run(tmp, steps, stop_after=None, **kw):
    tc = trainer.TrainConfig(steps=steps, learning_rate=1e-2, warmup_steps=2, log_every=1,
                             eval_every=4, save_every=3, **kw)
    it = data_lib.batches(records(), batch_size=4, seed=1)
    return trainer.train(ms.SpeculatorObjective(CFG), {}, it, tc, tmp,
                         validation=lambda: data_lib.eval_batches(records(8, seed=9), 4),
                         stop_after=stop_after, progress=False, log=lambda s: None)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_a_killed_run_resumes_to_the_same_parameters(tmp_path):
    whole = run(tmp_path / "whole", 10)
    part = run(tmp_path / "part", 10, stop_after=7)  # "killed" after step 7: saved at 6
    assert int(part.state.step) == 7
    resumed = run(tmp_path / "part", 10)
    assert resumed.resumed_from == 6 and int(resumed.state.step) == 10
    for a, b in zip(leaves(whole.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    lines = trainer.read_metrics(tmp_path / "whole")
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert "val_loss" in lines[3] and len(lines[3]["top1_i"]) == 2
    assert (tmp_path / "whole" / "best").is_dir()


def test_finished_run_is_not_trained_again(tmp_path):
    run(tmp_path, 4)
    again = run(tmp_path, 4)
    assert again.resumed_from == 4 and again.history == []


def test_loss_falls_and_the_curves_are_drawn(tmp_path):
    res = run(tmp_path, 12)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    pytest.importorskip("matplotlib")
    assert trainer.plot_curves(tmp_path).stat().st_size > 1000


@pytest.mark.parametrize("kw, match", [(dict(steps=0), "steps"), (dict(learning_rate=0), "steps"),
                                       (dict(save_every=0), "save_every")])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        trainer.TrainConfig(**kw)


def test_too_few_examples_for_a_batch():
    with pytest.raises(ValueError, match="cannot fill a batch"):
        data_lib.batches(records(3), batch_size=4)


SCRIPT = textwrap.dedent("""
    import json, sys, jax
    from jax.sharding import Mesh
    import numpy as np
    from tests.training.test_trainer import CFG, records
    from specjax.drafters import mlp_speculator as ms
    from specjax.training import data as data_lib, trainer
    n = int(sys.argv[1])
    mesh = None if n == 1 else Mesh(np.array(jax.devices()[:n]), ("data",))
    tc = trainer.TrainConfig(steps=5, learning_rate=1e-2, warmup_steps=1, log_every=1,
                             save_every=5, eval_every=5)
    res = trainer.train(ms.SpeculatorObjective(CFG), {}, data_lib.batches(records(), 8, seed=1),
                        tc, sys.argv[2], mesh=mesh, progress=False, log=lambda s: None)
    assert len(jax.tree.leaves(res.state.params)[0].sharding.device_set) == n
    print(json.dumps([r["loss"] for r in res.history]))
""")


def test_eight_devices_data_parallel_match_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    losses = []
    for n in (1, 8):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(tmp_path / f"d{n}")],
                             env=env, cwd=root, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        losses.append(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)

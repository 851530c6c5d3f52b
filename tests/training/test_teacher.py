"""The teacher pass (`specjax.training.teacher`): stored hidden states equal the
target's, a killed pass resumes, and outputs of another target are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models import decoder
from specjax.models.cache import init_cache
from specjax.models.params import init_params
from specjax.training import assets, corpus, data as data_lib, teacher
from tests.drafters.conftest import TINY


class Tok:
    def encode(self, text):
        return [ord(c) % 48 + 2 for c in text]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    docs = [corpus.Document("t", f"d{i}", f"line {i} of a small corpus\n" * 3, "h")
            for i in range(30)]
    corpus.build(docs, Tok().encode, root / "c", seq_len=24, eos_id=1, tokenizer_name="tok",
                 val_percent=0, progress=False)
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    return root, params, assets.target_identity("tiny", TINY, params)


def test_hidden_states_are_the_targets_and_the_pass_resumes(built):
    root, params, ident = built
    out = root / "t"
    kw = dict(layers=(0,), batch=3, shard_records=4, progress=False)
    teacher.run(TINY, params, ident, root / "c", out, **kw)
    shards = sorted(out.glob("hidden-*.array_record"))
    assert len(shards) >= 3
    shards[1].unlink()  # a killed pass: one shard missing
    before = {p.name: p.stat().st_mtime_ns for p in shards if p.exists()}
    teacher.run(TINY, params, ident, root / "c", out, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("hidden-*") if p.name in before} \
        == before  # finished shards are not rewritten
    src = teacher.TeacherSource(root / "c", out, identity=ident)
    ex = src[5]
    toks = jnp.asarray(ex["tokens"])[None]
    _, _, h, lh = decoder.prefill_features(params, TINY, toks, jnp.array([24]),
                                           init_cache(TINY, 1, 24), (0,))
    np.testing.assert_allclose(np.asarray(ex["hidden"], np.float32), h[0], atol=0.05, rtol=0.02)
    np.testing.assert_allclose(np.asarray(ex["layers"], np.float32), lh[:, 0], atol=0.05,
                               rtol=0.02)
    b = next(data_lib.batches(src, batch_size=4, seed=0))
    assert b["hidden"].shape == (4, 24, TINY.dim) and b["tokens"].shape == (4, 24)


def test_another_target_or_setting_is_refused(built):
    root, params, ident = built
    out = root / "t2"
    teacher.run(TINY, params, ident, root / "c", out, shard_records=64, progress=False)
    other = init_params(TINY, jax.random.key(1), scale=0.3)
    other_id = assets.target_identity("tiny", TINY, other)
    with pytest.raises(ValueError, match="differs in"):
        teacher.run(TINY, other, other_id, root / "c", out, progress=False)
    with pytest.raises(ValueError, match="teacher pass .* is for target"):
        teacher.TeacherSource(root / "c", out, identity=other_id)


def test_an_empty_split_is_an_empty_source(built):
    root, params, ident = built  # val_percent=0: no validation records
    teacher.run(TINY, params, ident, root / "c", root / "tv", split="val", progress=False)
    src = teacher.TeacherSource(root / "c", root / "tv", "val", ident)
    assert len(src) == 0 and len(src.records) == 0

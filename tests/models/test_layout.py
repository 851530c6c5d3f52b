"""The weight layout choice (models.layout): plans, names, and `layout="auto"`,
the per-machine choice of plain vs panel weights."""

import json

import pytest

from specjax.models import layout as L
from specjax.models.config import ModelConfig

TINY = ModelConfig(arch="llama", vocab_size=96, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, ffn_dim=64, tie_embeddings=True)
ROWS = [1, 2, 4, 8, 16, 32]


def _times(layer_plain, layer_panels, head_plain, head_panels):
    return {"rows": ROWS,
            "layer_ms": {"plain": dict(zip(ROWS, layer_plain)),
                         "panels": dict(zip(ROWS, layer_panels))},
            "head_ms": {"plain": dict(zip(ROWS, head_plain)),
                        "panels": dict(zip(ROWS, head_panels))}}


def test_decide_body_and_head_range():
    # this session's Qwen2.5-1.5B measurement (ms): plain layers, panelled head for M = 2..32
    t = _times([7.9, 10.0, 15.0, 18.5, 24.0, 35.1], [11.9, 11.9, 16.5, 20.1, 27.5, 33.4],
               [23.2, 56.9, 81.2, 97.5, 126.7, 180.5], [35.4, 34.0, 58.9, 70.2, 95.8, 152.4])
    assert L.decide(t) == L.LayoutPlan(body="plain", head=(2, 32))
    # panels faster for the layers over M = 1..8 (session 2's machine), head never
    t = _times([30, 45, 50, 60, 80, 120], [20, 21, 26, 35, 70, 130], [5] * 6, [6] * 6)
    assert L.decide(t) == L.LayoutPlan(body="panels", head=None)
    # a head win within the margin does not count; only M = 4 and 8 win clearly
    t = _times([1] * 6, [2] * 6, [10, 10, 10, 10, 10, 10], [9.8, 9.7, 5, 6, 9.9, 20])
    assert L.decide(t) == L.LayoutPlan(body="plain", head=(4, 8))
    assert L.decide(t, margin=0.0).head == (1, 16)


def test_plan_validation():
    with pytest.raises(ValueError, match="body"):
        L.LayoutPlan(body="columns", head=None)
    with pytest.raises(ValueError, match="head rows"):
        L.LayoutPlan(body="plain", head=(4, 2))


def test_measure_reports_every_row_count():
    t = L.measure(TINY, rows=(1, 4), reps=3, budget_s=1.0)
    for part in ("layer_ms", "head_ms"):
        for v in ("plain", "panels"):
            assert set(t[part][v]) == {1, 4} and all(x > 0 for x in t[part][v].values())
    with pytest.raises(ValueError, match="float32"):
        L.measure(TINY.replace(dtype="bfloat16"))


def test_probe_measures_once_per_machine_and_shapes(tmp_path, monkeypatch):
    calls = []
    fake = _times([1] * 6, [2] * 6, [10] * 6, [5, 5, 5, 20, 20, 20])

    def measure(cfg):
        calls.append(cfg)
        return fake

    monkeypatch.setattr(L, "measure", measure)
    plan = L.probe(TINY, cache=tmp_path, verbose=False)
    assert plan == L.LayoutPlan(body="plain", head=(1, 4)) and len(calls) == 1
    assert L.probe(TINY, cache=tmp_path, verbose=False) == plan and len(calls) == 1  # cached
    (f,) = (tmp_path / "layout").iterdir()
    assert json.loads(f.read_text())["head_ms"]["panels"]["8"] == 20
    other = TINY.replace(ffn_dim=128)  # other shapes, another probe
    assert L.cache_key(other) != L.cache_key(TINY)
    assert L.cache_key(TINY.replace(num_layers=7)) == L.cache_key(TINY)
    L.probe(other, cache=tmp_path, verbose=False)
    assert len(calls) == 2


def test_resolve_names_and_plans():
    assert L.resolve(TINY, "plain") == L.PLAIN == L.LayoutPlan(body="plain", head=None)
    assert L.resolve(TINY, "panels") == L.PANELS == L.LayoutPlan(body="panels", head=L.ALL_ROWS)
    plan = L.LayoutPlan(body="plain", head=(2, 8))
    assert L.resolve(TINY, plan) is plan
    assert L.resolve(TINY.replace(dtype="bfloat16"), "auto") == L.PLAIN  # probes float32 only
    with pytest.raises(ValueError, match="unknown weight layout 'columns'"):
        L.resolve(TINY, "columns")

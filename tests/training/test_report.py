"""The head report: predicted chain tau from per-head accuracies, vocabulary coverage,
measured tau from benchmark records."""

import json

import numpy as np
import pytest

from specjax.training import report


def test_predicted_chain_tau_is_the_per_position_acceptance_model():
    assert report.predicted_chain_tau([0.5, 0.5, 0.5]) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    # a truncated vocabulary scales every head's acceptance by the coverage
    assert report.predicted_chain_tau([1.0, 1.0], coverage=0.5) == pytest.approx(1.75)


def test_coverage_counts_real_tokens_only():
    recs = [{"tokens": np.array([1, 2, 3, 9]), "segments": np.array([1, 1, 1, 0])}]
    assert report.vocabulary_coverage(recs, [1, 2]) == pytest.approx(2 / 3)
    assert report.vocabulary_coverage(recs, None) == 1.0


def test_table_and_measured_tau(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "tokens": 100, "loss": 3.0},
        {"step": 20, "tokens": 200, "loss": 2.0, "val_loss": 2.5, "val_top1_i": [0.5, 0.25]}]))
    rows = report.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [20]
    table = report.accuracy_table(rows)
    assert "| 200 | 2.500 | 0.500 | 0.250 | 1.62 |" in table
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"method": "a", "new_tokens": 10, "target_calls": 4},
        {"method": "a", "new_tokens": 6, "target_calls": 4},
        {"method": "b", "new_tokens": 1, "target_calls": 1}]))
    assert report.measured_tau(tmp_path / "records.jsonl", "a") == 2.0
    with pytest.raises(ValueError, match="no records"):
        report.measured_tau(tmp_path / "records.jsonl", "c")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.read_metrics(tmp_path / "nothing")

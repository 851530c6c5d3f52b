"""The HF peers run in a second phase of `run_experiment`, after the JAX methods and
their weights are freed, and still answer the same prompts with the same tokens."""

import json

import pytest

from configs import quickstart
from specjax.bench import experiment


def test_peer_settings_are_checked_before_anything_loads():
    c = quickstart.get_config("tiny")
    c.peers = "hf_greedy,hf_fast"
    with pytest.raises(ValueError, match="unknown peers \\['hf_fast'\\]"):
        experiment.check_peers(experiment.from_config_dict(c))
    c.peers = "hf_assisted"
    with pytest.raises(ValueError, match="hf_assisted needs config.draft_model"):
        experiment.check_peers(experiment.from_config_dict(c))
    c.peers = "hf_greedy"
    c.sampling.temperature = 0.7
    with pytest.raises(ValueError, match="greedy only"):
        experiment.check_peers(experiment.from_config_dict(c))


@pytest.mark.slow
def test_peers_run_after_the_jax_methods_with_identical_tokens(tmp_path):
    pytest.importorskip("torch")
    c = quickstart.get_config("tiny")
    c.methods = "autoregressive"
    c.peers = "hf_greedy"
    c.max_new_tokens = 8
    c.prompts.spec_bench_categories = ""
    c.prompts.humaneval = "0"
    result = experiment.run_experiment(experiment.from_config_dict(c), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["autoregressive", "hf_greedy"]
    assert records[0]["tokens"] == records[1]["tokens"] and len(records[0]["tokens"]) == 8
    assert result["peak_resident_bytes"] > 100 << 20

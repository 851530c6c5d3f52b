"""Benchmark plumbing: metrics on hand-made logs, resume, Spec-Bench answer files, errors."""

import json

import numpy as np
import pytest

from specjax.bench import experiment, metrics, prompts, registry
from specjax.bench.metrics import Record
from specjax.bench.prompts import Prompt
from specjax.bench.runner import GenResult, Generator, run


def rec(method, qid, seconds, hist=(), tokens=(1, 2, 3), calls=3):
    steps = int(sum(hist))
    return Record(method=method, question_id=qid, category="c", new_tokens=len(tokens),
                  seconds=seconds, target_calls=calls, steps=steps, accept_hist=list(hist),
                  tokens=list(tokens), turn_texts=["x"], turn_tokens=[len(tokens)],
                  turn_seconds=[seconds])


def test_summary_from_known_logs():
    records = [rec("autoregressive", "a", 2.0), rec("autoregressive", "b", 4.0),
               rec("sd", "a", 1.0, hist=[1, 1, 2], calls=2),
               rec("sd", "b", 1.0, hist=[0, 0, 1], tokens=(1, 2, 4), calls=2)]
    rows = {r.method: r for r in metrics.summarize(records, "autoregressive", True)}
    sd = rows["sd"]
    # tokens per step: (1*1 + 2*1 + 3*2 + 3*1) / 5 steps
    assert sd.tau == pytest.approx(12 / 5)
    assert sd.speedup == pytest.approx(3.0)  # median of 2x and 4x
    assert sd.speedup_q25 == pytest.approx(2.5)
    assert sd.forwards_per_token == pytest.approx(4 / 6)
    assert sd.identical == "NO (1/2)"
    assert sd.accept_per_depth == pytest.approx([4 / 5, 3 / 5])
    assert rows["autoregressive"].tau == 1.0 and rows["autoregressive"].speedup == 1.0
    assert "| sd | 2 | 2.40 |" in metrics.markdown_table(list(rows.values()))


class FakeTok:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 50 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def counting_generator(name, calls):
    def fn(ids):
        calls.append(ids)
        return GenResult(tokens=ids[:3], target_calls=3, steps=1, accept_hist=[0, 0, 1])
    return Generator(name, fn, jax_based=False)


def test_resume_skips_finished_pairs(tmp_path):
    items = [Prompt("t", str(i), "c", (f"prompt {i}",), raw=True) for i in range(3)]
    path = tmp_path / "records.jsonl"
    calls = []
    run([counting_generator("m", calls)], items[:2], FakeTok(), records_path=path, progress=False)
    assert len(calls) == 2
    calls.clear()
    out = run([counting_generator("m", calls)], items, FakeTok(), records_path=path,
              progress=False)
    assert len(calls) == 1 and len(out) == 3  # only the new prompt ran
    assert [r.question_id for r in out] == ["0", "1", "2"]


def spec_bench_speed(jsonl_file, base_file):
    """Re-implementation of Spec-Bench's evaluation/speed.py reading logic (overall task)."""
    def load(f):
        return [json.loads(line) for line in open(f)]
    speeds, accept = [], []
    for d in load(jsonl_file):
        speeds.append(sum(d["choices"][0]["new_tokens"]) / sum(d["choices"][0]["wall_time"]))
        accept.extend(d["choices"][0]["accept_lengths"])
    base = [sum(d["choices"][0]["new_tokens"]) / sum(d["choices"][0]["wall_time"])
            for d in load(base_file)]
    return np.mean(speeds) / np.mean(base), np.mean(accept)


def test_answer_files_read_by_spec_bench_logic(tmp_path):
    records = [rec("autoregressive", "a", 2.0), rec("sd", "a", 1.0, hist=[1, 1, 2])]
    cfg = experiment.ExperimentConfig(model="m", methods="autoregressive")
    experiment._write_answers(tmp_path, records, cfg)
    speedup, mean_accept = spec_bench_speed(tmp_path / "sd.jsonl", tmp_path / "autoregressive.jsonl")
    assert speedup == pytest.approx(2.0)
    assert mean_accept == pytest.approx(records[1].tau)
    row = json.loads(open(tmp_path / "sd.jsonl").readline())
    assert row["question_id"] == "a" and row["choices"][0]["turns"] == ["x"]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="question file not found"):
        prompts.load_spec_bench(tmp_path / "nope.jsonl")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps(dict(question_id=1, category="qa", turns=["hi"])) + "\n")
    with pytest.raises(ValueError, match=r"unknown Spec-Bench categories \['poetry'\]; valid: \['qa', 'mt_bench'\]"):
        prompts.load_spec_bench(qfile, ["poetry"])
    with pytest.raises(ValueError, match="unknown method 'nope'; registered"):
        registry.get("nope")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['bogus'\]"):
        experiment.from_config_dict(dict(model="m", methods="autoregressive", bogus=1))
    with pytest.raises(ValueError, match=r"config.sampling"):
        experiment.from_config_dict(dict(model="m", methods="x", sampling=dict(temp=1.0)))
    with pytest.raises(ValueError, match="HumanEval has problems"):
        prompts.load_humaneval([500])


def test_quickstart_config_locks_unknown_keys():
    from configs import quickstart
    c = quickstart.get_config()
    cfg = experiment.from_config_dict(c)
    assert cfg.sampling.greedy and "autoregressive" in cfg.methods
    c.lock()
    with pytest.raises(AttributeError):
        c.not_a_key = 1
    with pytest.raises(ValueError, match="unknown quickstart variant"):
        quickstart.get_config("huge")


def test_humaneval_and_spec_bench_load():
    he = prompts.load_humaneval([0, 99])
    assert [p.question_id for p in he] == ["HumanEval/0", "HumanEval/99"] and he[0].raw
    sb = prompts.load_spec_bench(categories=["writing", "rag"], per_category=2, max_turns=2)
    assert [p.category for p in sb] == ["writing", "writing", "rag", "rag"]
    assert len(sb[0].turns) == 2
    assert len(prompts.load_spec_bench()) == 480  # the packaged copy, hash-checked


def test_spec_bench_packaged_copy_is_hash_checked(monkeypatch):
    """A corrupt packaged question file is an error naming the problem, not wrong prompts."""
    monkeypatch.setattr(prompts, "SPEC_BENCH_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="corrupt or was edited"):
        prompts.load_spec_bench()


def test_spec_bench_mt_bench_task(tmp_path):
    """"mt_bench" pools the two-turn categories; the cap fills them round-robin."""
    qfile = tmp_path / "q.jsonl"
    rows = [("writing", 2), ("writing", 2), ("writing", 2), ("roleplay", 2), ("qa", 1),
            ("qa", 1), ("roleplay", 2)]
    qfile.write_text("".join(json.dumps(dict(question_id=i, category=c, turns=["t"] * n)) + "\n"
                             for i, (c, n) in enumerate(rows)))
    got = prompts.load_spec_bench(qfile, ["mt_bench", "qa"], per_category=3)
    # round-robin writing, roleplay, writing; qa capped at its 2; file order kept
    assert [p.question_id for p in got] == ["0", "1", "3", "4", "5"]
    assert [p.category for p in got][:3] == ["writing", "writing", "roleplay"]
    assert len(prompts.load_spec_bench(qfile, ["mt_bench"])) == 5
    with pytest.raises(ValueError, match=r"valid: \['writing', 'roleplay', 'qa', 'mt_bench'\]"):
        prompts.load_spec_bench(qfile, ["poetry"])


def test_spec_bench_by_question_id(tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(dict(question_id=i, category=c, turns=["a", "b"])) + "\n"
                             for i, c in ((3, "qa"), (7, "rag"), (9, "qa"))))
    got = prompts.load_spec_bench_ids(qfile, ["9", "3"], max_turns=1)
    assert [(p.question_id, p.category, p.turns) for p in got] == [("9", "qa", ("a",)),
                                                                     ("3", "qa", ("a",))]
    with pytest.raises(ValueError, match=r"question ids \['5'\] are not in the question file"):
        prompts.load_spec_bench_ids(qfile, ["5"])
    cfg = experiment.PromptConfig(spec_bench_path=str(qfile), spec_bench_ids="7",
                                  spec_bench_categories="qa")  # ids win over categories
    assert [p.question_id for p in experiment.load_prompts(cfg)] == ["7"]


def test_method_overrides_may_hold_paths():
    info, args = registry.parse("sd_tree/tree=sequoia:/a/b/t.json@8/policy=none")
    assert info.name == "sd_tree" and args == {"tree": "sequoia:/a/b/t.json@8", "policy": "none"}
    assert registry.parse("retrieval/datastore=ds/x.npz")[1] == {"datastore": "ds/x.npz"}
    with pytest.raises(ValueError, match="method override 'k' in 'sd_chain/k' is not key=value"):
        registry.parse("sd_chain/k")

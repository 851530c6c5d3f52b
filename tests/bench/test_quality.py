"""Output-quality metrics of a run (`bench.quality`), target transforms
(`bench.transforms`) and what the runner carries for the decoders (the prompt for
`with_prompt` generators, a decoder's outputs and metrics)."""

import json
import math

import numpy as np
import pytest

from specjax.bench import quality, runner, transforms
from specjax.bench.metrics import Record
from specjax.bench.prompts import Prompt, load_json_schema_tasks
from specjax.decoders import grammar
from specjax.sampling import GREEDY, Sampling

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}},
                     "required": ["a"], "additionalProperties": False})
PROMPTS = [Prompt("x", "q1", "c", ("hi",)), Prompt("json_schema", "q2", "json", ("give",),
                                                   schema=SCHEMA)]


def _record(qid, tokens, text="", outputs=()):
    return Record(method="m", question_id=qid, category="c", new_tokens=len(tokens), seconds=1.0,
                  target_calls=len(tokens), steps=0, accept_hist=[], tokens=list(tokens),
                  turn_texts=[text], turn_tokens=[len(tokens)], outputs=[list(o) for o in outputs])


def test_add_quality_metrics():
    def score(prompts, outs):  # log p = -ln 2 per token: exactly 1 bit per token
        return np.array([-math.log(2) * len(o) for o in outs])

    recs = [_record("q1", [1, 2, 3, 1, 2, 3, 1, 2, 3], outputs=[[1, 2], [1, 2], [3, 4]]),
            _record("q2", [5, 6], text='{"a":1}'), _record("q2", [5, 6], text='{"a":"x"}')]
    quality.add_quality(recs, PROMPTS, lambda p: [0], score,
                        lambda text, schema: grammar.validate(text, json.loads(schema)))
    m = recs[0].metrics
    assert m["bits/token"] == pytest.approx(1.0) and m["outputs bits/token"] == pytest.approx(1.0)
    assert m["rep-4"] == pytest.approx(3 / 6)  # 6 4-grams, 3 of them seen before
    assert m["distinct-2"] == pytest.approx(3 / 8)
    assert m["outputs"] == 3 and m["outputs distinct-2"] == pytest.approx(2 / 3)
    assert "json valid" not in m
    assert recs[1].metrics["json valid"] == 1.0 and recs[2].metrics["json valid"] == 0.0
    table = quality.quality_table(recs)
    assert table.splitlines()[0].startswith("| method | rep-4 | distinct-2 |")
    assert "| m |" in table


def test_json_schema_prompts():
    items = load_json_schema_tasks(["person", "scores"])
    assert [p.question_id for p in items] == ["json/person", "json/scores"]
    assert all(json.loads(p.schema) and p.schema in p.turns[0] for p in items)
    with pytest.raises(ValueError, match="unknown JSON schema tasks"):
        load_json_schema_tasks(["nope"])


def test_transform_specs_and_checks():
    assert transforms.parse("") is None and transforms.parse("none") is None
    assert transforms.parse("mirostat:tau=4,version=1") == transforms.Mirostat(1, 4.0)
    with pytest.raises(ValueError, match="unknown transform 'x'"):
        transforms.parse("x")
    with pytest.raises(ValueError, match="bad argument 'k=1' of transform 'cfg'"):
        transforms.parse("cfg:k=1")
    with pytest.raises(ValueError, match="temperature=1"):
        transforms.parse("mirostat").check(GREEDY)
    transforms.parse("mirostat").check(Sampling(temperature=1.0))
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        transforms.parse("mirostat:version=3").check(Sampling(temperature=1.0))
    with pytest.raises(ValueError, match="guidance scale"):
        transforms.parse("cfg:scale=-1").check(GREEDY)
    with pytest.raises(ValueError, match="has none"):
        transforms.Grammar().wrap(None, None, PROMPTS[0], None)


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return [1, 2]

    def decode(self, ids, skip_special_tokens=True):
        return "x" * len(ids)


def test_runner_passes_prompts_and_keeps_outputs_and_metrics():
    seen = []

    def fn(ids, prompt):
        seen.append(prompt.question_id)
        return runner.GenResult(tokens=[4, 5], target_calls=2, metrics={"k": 1.5},
                                outputs=[[4, 5], [6]])

    gen = runner.Generator("g", fn, jax_based=False, with_prompt=True)
    items = [Prompt("x", "a", "c", ("t",), raw=True), Prompt("x", "b", "c", ("t",), raw=True)]
    recs = runner.run([gen], items, _Tok(), progress=False)
    assert seen == ["a", "b"]
    assert all(r.metrics == {"k": 1.5} and r.outputs == [[4, 5], [6]] for r in recs)
    assert runner.mean_metrics([{"a": 1.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}

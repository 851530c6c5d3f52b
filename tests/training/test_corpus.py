"""Training corpora (`specjax.training.corpus`): packing, the evaluation guard,
the written records and their provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from specjax.bench import prompts
from specjax.training import corpus


class CharTokenizer:
    def encode(self, text):
        return [ord(c) % 97 + 2 for c in text]


def test_pack_numbers_documents_and_pads_the_last_record():
    docs = [np.array([5, 6, 7, 1]), np.array([8, 1]), np.array([9, 9, 9, 9, 1])]
    recs = list(corpus.pack(docs, 4))
    assert [r[0].tolist() for r in recs] == [[5, 6, 7, 1], [8, 1, 9, 9], [9, 9, 1, 0]]
    assert [r[1].tolist() for r in recs] == [[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 1, 0]]


def test_documents_keep_their_own_segment_in_a_long_stream(tmp_path):
    """Many records' worth of documents: a segment number changes exactly after an EOS
    (a head never learns across a document boundary) and records hold every token."""
    docs = [corpus.Document("t", f"d{i}", "x" * (7 + i % 13), "h") for i in range(400)]
    prov = corpus.build(docs, CharTokenizer().encode, tmp_path / "c", seq_len=16, eos_id=1,
                        tokenizer_name="chars", val_percent=0, progress=False)
    recs = corpus.PackedRecords(tmp_path / "c")
    assert len(recs) * 16 >= prov["tokens"]["train"] > 64 * 16
    for i in range(len(recs)):
        t, seg = recs[i]["tokens"], recs[i]["segments"]
        for j in range(15):
            if seg[j + 1] > 0:
                assert (seg[j + 1] != seg[j]) == (t[j] == 1), (i, j)
    assert prov["sources"] == ["t"]


def test_guard_drops_documents_sharing_a_line_with_an_evaluation_set():
    guard = corpus.EvalGuard()
    he = prompts.humaneval_rows()[120]["prompt"]  # a problem of the final-report split too
    line = next(ln for ln in he.splitlines() if len(ln.strip()) >= 40)
    assert guard.contaminated("import os\n" + line + "\nprint(1)\n")
    assert guard.contaminated("x\n" + "   ".join(line.split()) + "\n")  # whitespace-insensitive
    sb = prompts.load_spec_bench()[0].turns[0]
    assert guard.contaminated(sb)
    assert not guard.contaminated("def add(a, b):\n    return a + b  # a plain helper function\n")


def test_build_writes_records_provenance_and_refuses_to_overwrite(tmp_path):
    he_line = next(ln for ln in prompts.humaneval_rows()[3]["prompt"].splitlines()
                   if len(ln.strip()) >= 40)
    docs = [corpus.Document("test", f"doc{i}", "hello world %d\n" % i * 20, "x") for i in range(40)]
    docs.append(corpus.Document("test", "leak", "ok\n" + he_line + "\n", "y"))
    docs.append(corpus.Document("test", "empty", "   \n", "z"))
    out = tmp_path / "c"
    prov = corpus.build(docs, CharTokenizer().encode, out, seq_len=64, eos_id=1, tokenizer_name="chars",
                        val_percent=20, progress=False)
    assert prov["dropped_eval_overlap"] == 1 and prov["eval_guard"]["dropped"] == ["leak"]
    assert prov["dropped_empty"] == 1 and prov["documents"] == 42
    assert json.loads((out / "provenance.json").read_text()) == prov
    train, val = corpus.PackedRecords(out, "train"), corpus.PackedRecords(out, "val")
    assert len(val) > 0 and prov["records"] == {"train": len(train), "val": len(val)}
    toks = np.concatenate([train[i]["tokens"][train[i]["segments"] > 0]
                           for i in range(len(train))])
    assert len(toks) == prov["tokens"]["train"] and (toks == 1).sum() == sum(
        not corpus.in_validation(f"doc{i}", 20) for i in range(40))
    with pytest.raises(FileExistsError):
        corpus.build(docs, CharTokenizer().encode, out, seq_len=64, eos_id=1, tokenizer_name="chars",
                     progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sources_and_their_errors(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    docs = list(corpus.parse_sources(f"text:{tmp_path}/*.txt,jsonl:{tmp_path}/d.jsonl@body"))
    assert [d.text for d in docs] == ["some text", "x", "y"]
    assert len(list(corpus.parse_sources("stdlib:3"))) == 3
    with pytest.raises(ValueError, match="unknown training source"):
        list(corpus.parse_sources("humaneval"))
    with pytest.raises(ValueError, match="no file matches"):
        list(corpus.parse_sources(f"text:{tmp_path}/*.md"))
    with pytest.raises(ValueError, match="no field"):
        list(corpus.parse_sources(f"jsonl:{tmp_path}/d.jsonl"))


def test_text_file_names_do_not_depend_on_where_the_files_live(tmp_path):
    """The split hashes document names: the same files elsewhere give the same names."""
    from specjax.training import corpus as corpus_lib

    names = []
    for where in ("a", "b/c"):
        root = tmp_path / where / "docs"
        (root / "sub").mkdir(parents=True)
        (root / "x.txt").write_text("x")
        (root / "sub" / "y.txt").write_text("y")
        names.append([d.name for d in corpus_lib.text_files(f"{root}/**/*.txt")])
    assert names[0] == names[1] == ["sub/y.txt", "x.txt"]

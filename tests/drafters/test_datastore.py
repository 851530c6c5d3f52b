"""The retrieval datastore (specjax.drafters.datastore): the suffix array vs
sorted suffixes, datastore files and their errors, corpus files."""

import json

import numpy as np
import pytest

from specjax.drafters import datastore as ds_lib


def test_suffix_array_matches_sorted_suffixes():
    rng = np.random.default_rng(0)
    for v, docs in [(3, 30), (50, 5), (2, 1)]:
        d = [rng.integers(0, v, size=rng.integers(1, 60)).tolist() for _ in range(docs)]
        d.append([1] * 40)  # a long repeat: many doubling rounds
        toks = ds_lib.corpus_tokens(d).tolist()
        want = sorted(range(len(toks)), key=lambda i: toks[i:])
        assert ds_lib.suffix_array(np.asarray(toks)).tolist() == want
        assert toks.count(-1) == len(d) and toks[-1] == -1


# ----------------------------------------------------------------------------
# Datastore files, corpora and bad input.
# ----------------------------------------------------------------------------


class CharTokenizer:
    """Stand-in tokenizer: one id per character (ord % 50)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 50 for c in t] for t in texts]}


def test_datastore_roundtrip_and_file_errors(tmp_path):
    ds = ds_lib.build_datastore([[1, 2, 3], [], [4, 2, 3, 2]], 10)
    path = tmp_path / "ds.npz"
    meta = ds_lib.save_datastore(ds, path, tokenizer="toy")
    assert meta["num_documents"] == 2 and meta["num_tokens"] == 9 and meta["vocab_size"] == 10
    back = ds_lib.load_datastore(path, vocab_size=10)
    np.testing.assert_array_equal(back.tokens, ds.tokens)
    np.testing.assert_array_equal(back.suffix_array, ds.suffix_array)
    assert ds_lib.read_meta(path)["tokenizer"] == "toy"
    with pytest.raises(ValueError, match="vocabulary of 10 tokens .* target has 12"):
        ds_lib.load_datastore(path, vocab_size=12)
    with pytest.raises(FileNotFoundError, match="datastore file not found.*build"):
        ds_lib.load_datastore(tmp_path / "missing.npz")
    with np.load(path) as z:  # corrupt the tokens, keep the header
        np.savez(tmp_path / "bad.npz", tokens=z["tokens"][::-1], suffix_array=z["suffix_array"],
                 meta=z["meta"])
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        ds_lib.load_datastore(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a specjax retrieval datastore"):
        ds_lib.load_datastore(tmp_path / "other.npz")
    empty = ds_lib.Datastore(tokens=np.full(2, -1, np.int32), suffix_array=np.arange(2, dtype=np.int32),
                         vocab_size=10)
    ds_lib.save_datastore(empty, tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="datastore is empty"):
        ds_lib.load_datastore(tmp_path / "empty.npz")


def test_build_errors():
    with pytest.raises(ValueError, match="datastore is empty"):
        ds_lib.build_datastore([[], []], 10)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        ds_lib.build_datastore([[1, 10]], 10)


def test_read_corpus_text_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first para\nline\n\nsecond\n")
    docs = ds_lib.read_corpus(str(txt))
    assert docs == [["first para\nline\n\n", "second\n"]]
    ids = ds_lib.tokenize_corpus(docs, CharTokenizer())
    assert ids == [[ord(c) % 50 for c in "first para\nline\n\nsecond\n"]]
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"turns": ["ab", "c"]}) + "\n\n" + json.dumps({"turns": ["d"]}) + "\n")
    assert ds_lib.read_corpus(str(jl)) == [["ab"], ["c"], ["d"]]
    assert ds_lib.read_corpus(str(jl), field="turns") == [["ab"], ["c"], ["d"]]
    with pytest.raises(ValueError, match="has no field text"):
        ds_lib.read_corpus(str(jl), field="text")
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        ds_lib.read_corpus(str(tmp_path / "nope.txt"))

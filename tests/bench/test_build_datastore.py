"""The datastore build command (experiments/build_datastore.py): the Spec-Bench
corpus, a build from a text file with the SmolLM2 tokenizer, `--info` and the
usage errors."""

import json

import pytest
from absl import app, flags
from absl.testing import flagsaver

from experiments import build_datastore as command
from specjax.drafters import datastore as ds_lib


def test_spec_bench_corpus_is_one_document_per_turn():
    spec = command.corpus_documents("spec_bench")
    assert len(spec) >= 480 and all(len(d) == 1 for d in spec)


def test_file_corpus_is_read_by_the_library(tmp_path):
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"turns": ["ab", "c"]}) + "\n" + json.dumps({"text": "d"}) + "\n")
    assert command.corpus_documents(str(jl)) == ds_lib.read_corpus(jl) == [["ab"], ["c"], ["d"]]


@pytest.fixture
def parsed_flags():
    """The command's flags at their defaults, as `app.run` leaves them; restored after."""
    was_parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    try:
        yield
    finally:
        if not was_parsed:
            flags.FLAGS.unparse_flags()


def test_usage_errors(parsed_flags):
    with flagsaver.flagsaver(out="x.npz"):
        with pytest.raises(app.UsageError, match="--tokenizer and --out are required"):
            command.main(["build_datastore"])
    with pytest.raises(app.UsageError, match="unexpected arguments"):
        command.main(["build_datastore", "build"])


@pytest.mark.slow
def test_build_and_info_with_the_smollm2_tokenizer(parsed_flags, tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("class Vector:\n    def __init__(self, x, y):\n        self.x = x\n\n"
                    "The capital of Italy is Rome.\n")
    out_path = tmp_path / "ds.npz"
    with flagsaver.flagsaver(tokenizer="smollm2-135m", corpus=str(text), out=str(out_path)):
        command.main(["build_datastore"])
    built = json.loads(capsys.readouterr().out)
    ds = ds_lib.load_datastore(out_path, vocab_size=49152)
    assert ds_lib.read_meta(out_path)["tokenizer"] == "smollm2-135m"
    assert built["corpus"] == str(text) and built["num_documents"] == 1
    assert built["num_tokens"] == ds.num_tokens > 10
    with flagsaver.flagsaver(info=str(out_path)):
        command.main(["build_datastore"])
    assert json.loads(capsys.readouterr().out) == built

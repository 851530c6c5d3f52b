"""Build (or inspect) a retrieval datastore for REST / RASD (arXiv:2311.08252).

    python -m experiments.build_datastore --tokenizer=smollm2-135m \
        --corpus=spec_bench --out=ds/spec_bench_smollm2.npz
    python -m experiments.build_datastore --info=ds/spec_bench_smollm2.npz

`--corpus` is `spec_bench` (every turn of the Spec-Bench questions packaged
with specjax is a document), a .jsonl / .jsonl.gz file (`--field`, default
the first of text / turns / content / prompt) or a plain text file
(`specjax.drafters.datastore.read_corpus`). The datastore is written by
`specjax.drafters.datastore.build`; its JSON header is printed.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from specjax.bench import prompts
from specjax.drafters import datastore

_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Asset name, GGUF path or HF directory.")
_CORPUS = flags.DEFINE_string("corpus", "spec_bench",
                              "'spec_bench', a .jsonl/.jsonl.gz file or a text file.")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_FIELD = flags.DEFINE_string("field", None, "jsonl field holding the text.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "The model's vocabulary size if it "
                                   "differs from the tokenizer's (Qwen2.5 pads it).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", None, "Keep only the first documents up to "
                                   "this many tokens.")
_INFO = flags.DEFINE_string("info", None, "Print this datastore file's metadata header "
                            "instead of building one.")


def corpus_documents(corpus: str, field: str | None = None) -> list[list[str]]:
    """The documents of `corpus`: "spec_bench" (one per question turn) or a file."""
    if corpus == "spec_bench":
        return [[turn] for p in prompts.load_spec_bench() for turn in p.turns]
    return datastore.read_corpus(corpus, field)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _INFO.value:
        meta = datastore.read_meta(_INFO.value)
    else:
        if not _TOKENIZER.value or not _OUT.value:
            raise app.UsageError("--tokenizer and --out are required (or --info=PATH)")
        meta = datastore.build(_TOKENIZER.value, corpus_documents(_CORPUS.value, _FIELD.value),
                               _OUT.value, corpus=_CORPUS.value, vocab_size=_VOCAB_SIZE.value,
                               max_tokens=_MAX_TOKENS.value)
    json.dump(meta, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    app.run(main)

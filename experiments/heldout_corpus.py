"""A retrieval corpus that excludes a benchmark's prompts (no copying of the test text).

    python -m experiments.heldout_corpus --config=configs/train_free.py --out=ds/heldout.jsonl
    python -m experiments.build_datastore --tokenizer=smollm2-135m \
        --corpus=ds/heldout.jsonl --out=ds/heldout_smollm2.npz

Writes one jsonl document per line (`{"text": ...}`): every Spec-Bench turn
and every HumanEval problem (prompt + canonical solution) whose question the
config does NOT select, plus, with --stdlib (default on), the source files of
Python's standard library as a code corpus (REST, arXiv:2311.08252, retrieves
code from The Stack; the stdlib is the code corpus available offline). The
selected prompts themselves never enter the datastore, so retrieval drafts
measure transfer from related text, not copying of the test prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from specjax.bench import experiment, prompts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config whose prompts "
                                          "are held out.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output .jsonl file.")
_STDLIB = flags.DEFINE_bool("stdlib", True, "Add the Python standard library's sources.")
_STDLIB_FILES = flags.DEFINE_integer("stdlib_files", 400, "At most this many stdlib files "
                                     "(files above 200 kB are skipped).")


def main(argv):
    del argv
    if _CONFIG.value is None or not _OUT.value:
        raise app.UsageError("--config and --out are required")
    cfg = experiment.from_config_dict(_CONFIG.value)
    selected = {p.question_id for p in experiment.load_prompts(cfg.prompts)}
    docs = prompts.heldout_documents(selected, _STDLIB_FILES.value if _STDLIB.value else 0)
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for d in docs:
            f.write(json.dumps(dict(text=d)) + "\n")
    print(f"{len(docs)} documents ({sum(map(len, docs))} characters), {len(selected)} "
          f"prompts held out -> {out}")


if __name__ == "__main__":
    app.run(main)

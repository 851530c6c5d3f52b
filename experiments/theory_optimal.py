"""Verifiers vs the optimal multi-draft acceptance on real distributions.

    python -m experiments.theory_optimal --config=configs/theory_optimal.py

Overrides: `--config.settings.num_positions=20 --config.settings.temperatures=0.7`.
Writes table.md, results.json, plot.png, rows.npz and logits.npz (reused by the next
run on the same prompts) into `--workdir` (default workdir/theory_optimal; see
specjax.bench.theory_experiment).
"""

from absl import app, flags
from ml_collections import config_flags

from specjax.bench import theory_experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/theory_optimal", "Output directory.")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=configs/theory_optimal.py)")
    cfg = theory_experiment.from_config_dict(_CONFIG.value)
    result = theory_experiment.run_experiment(cfg, _WORKDIR.value)
    with open(result["paths"]["table"]) as f:
        print(f.read())
    print(f"total {result['seconds']['total']:.0f} s; results in {_WORKDIR.value}: "
          "table.md, results.json, plot.png")


if __name__ == "__main__":
    app.run(main)

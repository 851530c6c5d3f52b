"""Measured vs predicted tokens per target call of chain speculative sampling (issue 4).

    python -m experiments.chain_prediction --config=configs/chain_prediction.py

Writes table.md and results.json into `--workdir` (default
workdir/chain_prediction); see specjax.bench.chain_prediction.
"""

from absl import app, flags
from ml_collections import config_flags

from specjax.bench import chain_prediction

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/chain_prediction", "Output directory.")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=configs/chain_prediction.py)")
    cfg = chain_prediction.from_config_dict(_CONFIG.value)
    result = chain_prediction.run_experiment(cfg, _WORKDIR.value)
    print(result["table"])
    print(f"total {result['seconds']['total']:.0f} s; results in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)

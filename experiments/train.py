"""Trains a draft head: `python -m experiments.train --config=configs/train/mlp_speculator.py`.

Corpus, teacher pass, training and the saved head (see
specjax.training.experiment); `--workdir` holds the checkpoints, metrics.jsonl
and curves.png, and a rerun resumes where a killed one stopped.
"""

import functools

from absl import app, flags
from ml_collections import config_flags

from specjax.training import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and metrics (required).")


def main(argv):
    del argv
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    from specjax.bench.experiment import enable_compilation_cache

    enable_compilation_cache()
    cfg = experiment.from_config_dict(_CONFIG.value)
    out = experiment.run(cfg, _WORKDIR.value, log=functools.partial(print, flush=True))
    print(f"head: {out['head']}  best validation loss: {out['best_val_loss']:.4f}")


if __name__ == "__main__":
    app.run(main)

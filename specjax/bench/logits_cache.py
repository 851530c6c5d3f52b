"""An .npz cache of greedy continuations and both models' teacher-forced logits.

The model phases of `theory_experiment.run` (continuations, then target and
draft logits at every position) dominate its cost; the analysis after them
(temperatures, draft counts, truncation) is cheap. The cache stores, per
prompt i, "cont_i" (int64[M_i]), "target_i" and "draft_i" (float32[M_i, V]),
plus a "key" string naming what was computed (models, prompts, positions, EOS
ids): a file with another key is ignored. Writes go through a temporary file,
so an interrupted write never leaves a truncated cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

def write_logits_cache(path: str | Path, key: str, conts: Sequence[Sequence[int]],
                       t_logits: Sequence[np.ndarray], d_logits: Sequence[np.ndarray]) -> None:
    """Writes the continuations and logits of every prompt under `key` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key)}
    for i, (c, t, d) in enumerate(zip(conts, t_logits, d_logits)):
        arrays[f"cont_{i}"] = np.asarray(c, np.int64)
        arrays[f"target_{i}"] = t
        arrays[f"draft_{i}"] = d
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def read_logits_cache(path: str | Path, key: str
                      ) -> tuple[list[list[int]], list[np.ndarray], list[np.ndarray]] | None:
    """(continuations, target logits, draft logits) stored under `key`, or None (no file, or
    another key)."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        n = sum(1 for k in z.files if k.startswith("cont_"))
        return ([z[f"cont_{i}"].tolist() for i in range(n)], [z[f"target_{i}"] for i in range(n)],
                [z[f"draft_{i}"] for i in range(n)])


"""Training batches: packed token records joined with the teacher's hidden states,
read with grain.

A training example is one packed record (`specjax.training.corpus`):

    tokens    int32[L]   token ids of one or more documents, back to back
    segments  int32[L]   document number within the record (1, 2, ...; 0 = padding)
    hidden    [L, D]     the frozen target's last hidden state at each position
                         (`specjax.training.teacher`; bfloat16 on disk)

`batches` shuffles, repeats and batches any random-access source of such
examples (a list, or `TeacherSource` over the files on disk) with grain's
`MapDataset`, whose iterator state (`get_state` / `set_state`, a small dict)
the trainer checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def batches(source: Sequence[dict], batch_size: int, seed: int = 0,
            num_epochs: int | None = None):
    """A checkpointable iterator of shuffled batches (dicts of arrays [batch_size, ...]).

    Each epoch is a new permutation of the examples (grain's `shuffle` over
    the repeated dataset); incomplete batches are dropped. `num_epochs`
    None repeats forever.
    """
    import grain

    if len(source) < batch_size:
        raise ValueError(f"{len(source)} training examples cannot fill a batch of {batch_size}")
    ds = grain.MapDataset.source(source).repeat(num_epochs).shuffle(seed=seed)
    return iter(ds.batch(batch_size, drop_remainder=True).to_iter_dataset())


def eval_batches(source: Sequence[dict], batch_size: int) -> Iterator[dict]:
    """The examples in order, in batches (the last one may be smaller)."""
    for i in range(0, len(source), batch_size):
        items = [source[j] for j in range(i, min(i + batch_size, len(source)))]
        yield {k: np.stack([x[k] for x in items]) for k in items[0]}

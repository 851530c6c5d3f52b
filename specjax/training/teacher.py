"""The teacher pass: the frozen target's hidden states over a packed corpus, on disk.

Heads learn from the target's last hidden state (after the final norm: the LM
head's input) at every position, and feature drafters (EAGLE-3) from chosen
layers' residual streams. `run` feeds the corpus' records through one jitted,
batched, teacher-forced prefill of the target (`decoder.prefill_features`)
and stores, per record, hidden [L, D] (and layers [J, L, D]) in bfloat16 in
array_record shards of `shard_records` records:

    <out>/hidden-00000.array_record, ...   one record per corpus record, same order
    <out>/teacher.json    the target's identity (`training.assets.target_identity`), layers,
                          dtype, shard size, the corpus' provenance file hash

A shard is written under a temporary name and renamed when complete, so a
killed pass resumes at the first missing shard and never reads a half-written
one. Teacher logits are not stored (V x 2 bytes per token); heads that need
them recompute them from the stored final hidden state and the frozen LM head.

`TeacherSource` joins a corpus split with its teacher shards into the
{"tokens", "segments", "hidden"[, "layers"]} examples of `training.data`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from specjax.training.corpus import PackedRecords

SHARD = "hidden-{:05d}.array_record"


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def run(target_cfg, target_params, identity: dict, corpus: str | Path, out: str | Path, *,
        split: str = "train", layers: tuple[int, ...] = (), batch: int = 4,
        shard_records: int = 256, progress: bool = True) -> dict:
    """Writes (or completes) the teacher outputs of a corpus split; returns teacher.json.

    Raises:
      ValueError: `out` holds a pass of another target, corpus or layer choice.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm.auto import tqdm

    from specjax.models import decoder
    from specjax.models.cache import init_cache

    corpus = Path(corpus).expanduser()
    records = PackedRecords(corpus, split)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"target": identity, "corpus_provenance_sha256": hashlib.sha256(
        (corpus / "provenance.json").read_bytes()).hexdigest(), "split": split,
        "layers": list(layers), "dtype": "bfloat16", "shard_records": shard_records,
        "records": len(records), "seq_len": records.seq_len, "dim": target_cfg.dim}
    info = out / "teacher.json"
    if info.is_file():
        old = json.loads(info.read_text())
        if old != meta:
            diff = sorted(k for k in meta if old.get(k) != meta[k])
            raise ValueError(f"{out} holds a teacher pass that differs in {diff}; use another "
                             "directory")
    else:
        info.write_text(json.dumps(meta, indent=1))
    L = records.seq_len

    @jax.jit
    def features(params, tokens):
        cache = init_cache(target_cfg, tokens.shape[0], L)
        lengths = jnp.full((tokens.shape[0],), L, jnp.int32)
        _, _, hidden, layer_hidden = decoder.prefill_features(params, target_cfg, tokens, lengths,
                                                              cache, layers)
        return hidden.astype(jnp.bfloat16), (None if layer_hidden is None
                                             else layer_hidden.astype(jnp.bfloat16))

    num_shards = -(-len(records) // shard_records)
    bar = tqdm(total=len(records), desc="teacher", unit="rec", disable=not progress)
    for s in range(num_shards):
        lo, hi = s * shard_records, min((s + 1) * shard_records, len(records))
        path = out / SHARD.format(s)
        if path.is_file():
            bar.update(hi - lo)
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        for i in range(lo, hi, batch):
            idx = list(range(i, min(i + batch, hi)))
            toks = np.stack([records[j]["tokens"] for j in idx])
            if len(idx) < batch:  # one compiled shape: pad the last batch
                toks = np.concatenate([toks, np.zeros((batch - len(idx), L), np.int32)])
            hidden, layer_hidden = jax.device_get(features(target_params, jnp.asarray(toks)))
            for r in range(len(idx)):
                parts = [np.asarray(hidden[r]).view(np.uint16).tobytes()]
                if layer_hidden is not None:
                    parts.append(np.asarray(layer_hidden[:, r]).view(np.uint16).tobytes())
                writer.write(b"".join(parts))
            bar.update(len(idx))
        writer.close()
        os.replace(tmp, path)
    bar.close()
    return meta


class TeacherSource:
    """A corpus split joined with its teacher pass: examples {"tokens" int32[L],
    "segments" int32[L], "hidden" bf16[L, D][, "layers" bf16[J, L, D]]}."""

    def __init__(self, corpus: str | Path, teacher: str | Path, split: str = "train",
                 identity: dict | None = None):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.records = PackedRecords(corpus, split)
        teacher = Path(teacher).expanduser()
        self.meta = json.loads((teacher / "teacher.json").read_text())
        if identity is not None:
            from specjax.training.assets import check_target

            check_target(self.meta["target"], identity, f"the teacher pass in {teacher}")
        shards = [teacher / SHARD.format(s)
                  for s in range(-(-self.meta["records"] // self.meta["shard_records"]))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing or self.meta["records"] != len(self.records):
            raise ValueError(f"the teacher pass in {teacher} is incomplete (missing {missing}); "
                             "run it again to finish it")
        # an empty split (e.g. no document hashed into validation) has no shard
        self._hidden = ArrayRecordDataSource([str(p) for p in shards]) if shards else None
        self.dim, self.num_layers = self.meta["dim"], len(self.meta["layers"])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        ex = dict(self.records[i])
        L, D, J = self.records.seq_len, self.dim, self.num_layers
        raw = np.frombuffer(self._hidden[i], np.uint16)
        ex["hidden"] = raw[:L * D].view(_bf16()).reshape(L, D)
        if J:
            ex["layers"] = raw[L * D:].view(_bf16()).reshape(J, L, D)
        return ex

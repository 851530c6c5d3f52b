"""Sequoia-style static draft trees from a measured per-rank acceptance vector.

Sequoia ("Sequoia: Scalable, Robust, and Hardware-aware Speculative Decoding",
Chen et al., arXiv:2402.12374, Sec. 3.1) models a draft tree by *positional
acceptance*: the k-th child of an accepted node is the accepted one with a
probability acceptance[k] that depends only on its rank k, so the expected
tokens per target call of a tree is 1 + sum_v prod_{edges to v} acceptance[rank]
(`theory.tree_expected_tokens`) and a dynamic programme finds the best tree of
n nodes. This module

1. holds a measured acceptance vector (`AcceptanceEstimate`; measured on a
   model pair by `specjax.bench.sequoia_acceptance.measure_acceptance`);
2. builds the optimal tree for a node budget and an optional depth bound
   (`build_template`; the depth bounds the draft forwards per step, the
   hardware-aware constraint of Sequoia);
3. saves / loads tree templates as JSON (`save_templates`, `load_templates`,
   `template_parents`) for `DraftModel(model, parents, rule)` (the `sd_tree`
   method).

Lossless: the template only chooses the SHAPE of the draft tree; any shape
verified by `verify.greedy` (temperature 0) or `verify.tree_rrs` (sampling)
keeps the target's output law exactly. A poorly measured vector only costs
speed.

Parent arrays here use the `specjax.trees` convention: node 0 is the root (the
last committed token), parents[0] = -1, and the draft nodes are in BFS order
(parents non-decreasing), siblings ranked by index. `theory.tree_expected_tokens`
and `theory.optimal_tree` use draft nodes only (root children have parent -1);
`theory_parents` converts.

Letters: M scored positions, K measured ranks, N tree nodes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specjax import theory
from specjax.sampling import Sampling

FORMAT = "specjax.sequoia_tree"
VERSION = 1
SPEC_PREFIX = "sequoia:"

# ----------------------------------------------------------------------------
# A measured per-rank acceptance vector.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AcceptanceEstimate:
    """A measured per-rank acceptance vector.

    Attributes:
      acceptance: float64[K], acceptance[k] = P(the rank-k child is the accepted one).
      stderr: float64[K], standard error of each entry, treating positions as
        independent (they are correlated along a text, so this is optimistic).
      positions: M, the number of scored positions.
      per_position: float64[M, K], the per-position values whose mean is `acceptance`.
    """

    acceptance: np.ndarray
    stderr: np.ndarray
    positions: int
    per_position: np.ndarray

    @classmethod
    def from_values(cls, values: np.ndarray) -> "AcceptanceEstimate":
        """Mean and standard error of per-position values float[M, K] (M >= 1)."""
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or values.shape[0] < 1:
            raise ValueError(f"need per-position values [M >= 1, K], got shape {values.shape}")
        m = values.shape[0]
        err = values.std(axis=0, ddof=1) / math.sqrt(m) if m > 1 else np.full(values.shape[1], np.inf)
        return cls(acceptance=values.mean(axis=0), stderr=err, positions=m, per_position=values)


# ----------------------------------------------------------------------------
# The optimal tree.
# ----------------------------------------------------------------------------


def optimal_tree(acceptance, num_nodes: int, max_depth: int | None = None
                 ) -> tuple[float, np.ndarray]:
    """`theory.optimal_tree` (Sequoia's programme with a depth bound) with the tree as a
    `specjax.trees` parent array (root included, BFS order)."""
    value, draft_parents = theory.optimal_tree(acceptance, num_nodes, max_depth)
    return value, np.concatenate([[-1], draft_parents + 1]).astype(np.int64)


def theory_parents(parents: Sequence[int]) -> np.ndarray:
    """`specjax.trees` parent array (root included) -> draft-only array of `theory`."""
    arr = np.asarray(parents, np.int64)
    return arr[1:] - 1


def tree_expected_tokens(parents: Sequence[int], acceptance) -> float:
    """`theory.tree_expected_tokens` of a `specjax.trees` parent array (root included)."""
    return theory.tree_expected_tokens(theory_parents(parents), acceptance)


def build_template(acceptance, num_nodes: int, max_depth: int | None = None) -> tuple[int, ...]:
    """Parent array (root included, `DraftModel`-ready) of the best Sequoia tree.

    Args:
      acceptance: [K] measured per-rank acceptance
        (`specjax.bench.sequoia_acceptance.measure_acceptance`).
      num_nodes: draft-node budget.
      max_depth: optional bound on the tree depth (= draft forwards per step).

    Returns:
      tuple of ints, parents[0] = -1, BFS order.
    """
    return tuple(int(p) for p in optimal_tree(acceptance, num_nodes, max_depth)[1])


# ----------------------------------------------------------------------------
# Templates on disk.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TreeTemplate:
    """A static draft tree and where it came from (one entry of a template file).

    Attributes:
      parents: `specjax.trees` parent array (root included, BFS order).
      acceptance: the per-rank acceptance vector the tree was optimised for.
      expected_tokens: `tree_expected_tokens(parents, acceptance)` (bonus included).
      num_nodes: draft nodes of the tree (len(parents) - 1).
      target, draft: names of the model pair (e.g. "smollm2-135m", "self:10").
      sampling: {"temperature", "top_k", "top_p"} of the measurement.
      positions: scored positions behind `acceptance`.
      acceptance_stderr: standard errors of `acceptance` (may be empty).
      max_depth: the depth bound used (None = unbounded).
      requested_nodes: the node budget asked for (>= num_nodes).
    """

    parents: tuple[int, ...]
    acceptance: tuple[float, ...]
    expected_tokens: float
    num_nodes: int
    target: str
    draft: str
    sampling: Mapping[str, float]
    positions: int
    acceptance_stderr: tuple[float, ...] = ()
    max_depth: int | None = None
    requested_nodes: int | None = None

    @property
    def depth(self) -> int:
        """Deepest draft level (0 for a root-only tree)."""
        dep = [0]
        for p in self.parents[1:]:
            dep.append(dep[p] + 1)
        return max(dep)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["parents"], d["acceptance"] = list(self.parents), list(self.acceptance)
        d["acceptance_stderr"], d["sampling"] = list(self.acceptance_stderr), dict(self.sampling)
        return d


REQUIRED_KEYS = ("parents", "acceptance", "expected_tokens", "num_nodes", "target", "draft",
                 "sampling", "positions")
OPTIONAL_KEYS = ("acceptance_stderr", "max_depth", "requested_nodes")


def make_template(estimate: AcceptanceEstimate | Sequence[float], num_nodes: int, *,
                  target: str, draft: str, sampling: Sampling,
                  max_depth: int | None = None, positions: int | None = None) -> TreeTemplate:
    """The optimal `TreeTemplate` for a measured acceptance (an estimate or a plain vector)."""
    if isinstance(estimate, AcceptanceEstimate):
        acc, err, pos = estimate.acceptance, estimate.stderr, estimate.positions
    else:
        acc, err, pos = np.asarray(estimate, np.float64), np.zeros(0), positions or 0
    value, parents = optimal_tree(acc, num_nodes, max_depth)
    return TreeTemplate(
        parents=tuple(int(p) for p in parents), acceptance=tuple(float(a) for a in acc),
        expected_tokens=float(value), num_nodes=len(parents) - 1, target=str(target),
        draft=str(draft), sampling=sampling_dict(sampling), positions=int(pos),
        acceptance_stderr=tuple(float(e) for e in err) if np.all(np.isfinite(err)) else (),
        max_depth=None if max_depth is None else int(max_depth), requested_nodes=int(num_nodes))


def sampling_dict(sampling: Sampling) -> dict:
    return dict(temperature=float(sampling.temperature), top_k=int(sampling.top_k),
                top_p=float(sampling.top_p))


def save_templates(path: str | Path, templates: Sequence[TreeTemplate]) -> Path:
    """Writes templates to a JSON file ({"format", "version", "templates": [...]}).

    Every template is validated first, so a file written here always loads.
    """
    if not templates:
        raise ValueError("no template to save")
    for i, t in enumerate(templates):
        validate_template(t.to_json(), f"template {i}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(format=FORMAT, version=VERSION, templates=[t.to_json() for t in templates])
    text = json.dumps(doc, indent=1)
    # number lists on one line each: [-1, 0, 0, 1, ...]
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    path.write_text(text + "\n")
    return path


def load_templates(path: str | Path) -> list[TreeTemplate]:
    """Reads and validates a template file (the `save_templates` layout, or one bare template).

    Raises:
      FileNotFoundError: no such file.
      ValueError: malformed JSON or template, naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sequoia template file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if "templates" in doc:
        if doc.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{path}: format is {doc['format']!r}, expected {FORMAT!r}")
        if doc.get("version", VERSION) != VERSION:
            raise ValueError(f"{path}: version {doc['version']!r} is not supported ({VERSION})")
        items = doc["templates"]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}: 'templates' must be a non-empty list")
    else:
        items = [doc]
    return [validate_template(item, f"{path}: template {i}") for i, item in enumerate(items)]


def load_template(path: str | Path, num_nodes: int | None = None) -> TreeTemplate:
    """One template of a file: the only one, or the one with `num_nodes` drafts (or budget)."""
    templates = load_templates(path)
    if num_nodes is None:
        if len(templates) > 1:
            raise ValueError(f"{path} holds {len(templates)} templates (num_nodes "
                             f"{[t.num_nodes for t in templates]}); choose one with @N")
        return templates[0]
    found = [t for t in templates if num_nodes in (t.num_nodes, t.requested_nodes)]
    if not found:
        raise ValueError(f"{path} has no template with {num_nodes} nodes; it has "
                         f"{[t.num_nodes for t in templates]}")
    return found[0]


def parse_spec(spec: str) -> tuple[Path, int | None]:
    """`"sequoia:PATH[@N]"` -> (PATH, N or None)."""
    if not spec.startswith(SPEC_PREFIX):
        raise ValueError(f"a Sequoia tree spec looks like 'sequoia:PATH[@N]', got {spec!r}")
    body = spec[len(SPEC_PREFIX):]
    path, sep, n = body.rpartition("@")
    if not sep:
        return Path(body), None
    if not n.isdigit():
        raise ValueError(f"in {spec!r}, the part after '@' must be a node count")
    return Path(path), int(n)


def template_parents(spec: str) -> tuple[int, ...]:
    """Parent array of the template named by `"sequoia:PATH[@N]"` (for `DraftModel`)."""
    path, n = parse_spec(spec)
    return load_template(path, n).parents


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_template(d: Any, where: str = "template") -> TreeTemplate:
    """A `TreeTemplate` from its JSON dict, with a ValueError naming the first problem.

    Checks: required keys present and no unknown ones; types; parents a BFS
    tree (parents[0] = -1, 0 <= parents[i] < i, non-decreasing); num_nodes =
    len(parents) - 1; acceptance non-negative with sum <= 1; expected_tokens
    equal to the tree's value under `acceptance`.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    unknown = sorted(set(d) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    parents = d["parents"]
    if not isinstance(parents, list) or not parents or not all(_is_int(p) for p in parents):
        raise ValueError(f"{where}: 'parents' must be a non-empty list of ints, got {parents!r}")
    if parents[0] != -1:
        raise ValueError(f"{where}: parents[0] must be -1 (the root), got {parents[0]}")
    for i in range(1, len(parents)):
        if not 0 <= parents[i] < i:
            raise ValueError(f"{where}: parents are not a BFS tree: parents[{i}] = {parents[i]} "
                             f"must satisfy 0 <= parent < {i}")
        if i > 1 and parents[i] < parents[i - 1]:
            raise ValueError(f"{where}: parents are not in BFS order: parents[{i}] = {parents[i]} "
                             f"< parents[{i - 1}] = {parents[i - 1]} (must be non-decreasing)")
    for key in ("acceptance", "acceptance_stderr"):
        vec = d.get(key, [])
        if not isinstance(vec, list) or not all(_is_number(a) for a in vec):
            raise ValueError(f"{where}: {key!r} must be a list of finite numbers, got {vec!r}")
    acc = d["acceptance"]
    if not acc or min(acc) < 0 or sum(acc) > 1 + 1e-9:
        raise ValueError(f"{where}: 'acceptance' must be non-empty, non-negative and sum to "
                         f"<= 1, got {acc}")
    if d.get("acceptance_stderr") and len(d["acceptance_stderr"]) != len(acc):
        raise ValueError(f"{where}: 'acceptance_stderr' has {len(d['acceptance_stderr'])} "
                         f"entries, 'acceptance' {len(acc)}")
    for key in ("num_nodes", "positions"):
        if not _is_int(d[key]) or d[key] < 0:
            raise ValueError(f"{where}: {key!r} must be an int >= 0, got {d[key]!r}")
    for key in ("max_depth", "requested_nodes"):
        if d.get(key) is not None and (not _is_int(d[key]) or d[key] < 0):
            raise ValueError(f"{where}: {key!r} must be null or an int >= 0, got {d[key]!r}")
    if d["num_nodes"] != len(parents) - 1:
        raise ValueError(f"{where}: 'num_nodes' = {d['num_nodes']} but 'parents' holds "
                         f"{len(parents) - 1} draft nodes (plus the root)")
    for key in ("target", "draft"):
        if not isinstance(d[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {d[key]!r}")
    samp = d["sampling"]
    if (not isinstance(samp, dict) or set(samp) != {"temperature", "top_k", "top_p"}
            or not all(_is_number(v) for v in samp.values()) or not _is_int(samp["top_k"])):
        raise ValueError(f"{where}: 'sampling' must be {{'temperature': float, 'top_k': int, "
                         f"'top_p': float}}, got {samp!r}")
    try:
        Sampling(**samp)
    except ValueError as e:
        raise ValueError(f"{where}: 'sampling' is invalid: {e}") from None
    if not _is_number(d["expected_tokens"]):
        raise ValueError(f"{where}: 'expected_tokens' must be a number, got "
                         f"{d['expected_tokens']!r}")
    value = tree_expected_tokens(parents, acc)
    if abs(value - d["expected_tokens"]) > 1e-6 * max(1.0, value):
        raise ValueError(f"{where}: 'expected_tokens' = {d['expected_tokens']} does not match "
                         f"the tree under its acceptance vector ({value})")
    return TreeTemplate(
        parents=tuple(parents), acceptance=tuple(float(a) for a in acc),
        expected_tokens=float(d["expected_tokens"]), num_nodes=d["num_nodes"],
        target=d["target"], draft=d["draft"], sampling=dict(samp), positions=d["positions"],
        acceptance_stderr=tuple(float(a) for a in d.get("acceptance_stderr", [])),
        max_depth=d.get("max_depth"), requested_nodes=d.get("requested_nodes"))

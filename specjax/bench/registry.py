"""Named methods: every runnable method is drafter x policy x verifier with defaults.

`python -m experiments.run --list` prints this table with each method's
settings. A method's settings are the fields of the dataclasses (and
functions) it is built from (`MethodInfo.parts`, read by `specjax.settings`),
so one name and one default, the class's, serve every way to set them:

  override     config.methods = "pld/num_drafts=4,sd_chain/k=6"
  config dict  config.draft.pld = dict(num_drafts=4)  (a section per method)
  Python       PromptLookup(V, num_drafts=4)

Precedence: override > config.draft's top level (applies to every method
with that field, e.g. self_layers) > the method's section > the class default.
A key that no method knows, or an override the method does not take, is a
ValueError listing the valid ones. Builders get a `BuildContext` with the
loaded target (and draft) and the method's resolved `Settings`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax

from specjax import decode, policies, settings, trees, verify
from specjax.bench import decoder_methods, step_costs as step_costs_lib
from specjax.bench.runner import GenResult, Generator
from specjax.drafters.draft_model import DraftModel
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers
from specjax.sampling import Sampling
from specjax.verify import laws

# settings config.draft may hold for things other than registered methods
PEER_SETTINGS = ("prompt_lookup",)  # hf_prompt_lookup's prompt_lookup_num_tokens (experiment)


@dataclasses.dataclass
class BuildContext:
    """What builders may use: the target, an optional draft model, run settings.

    `args`: config.draft as a dict (settings, and sections `{method: {...}}`)
    merged with a method's overrides (`parse`).
    """

    target_cfg: ModelConfig
    target_params: Any
    max_new_tokens: int
    sampling: Sampling
    eos_ids: tuple[int, ...]
    draft_cfg: ModelConfig | None = None
    draft_params: Any = None
    args: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    transform: Any = None  # `bench.transforms`: every method decodes the transformed target
    tokenizer: Any = None

    def target_for(self, prompt=None) -> tuple[Any, Any]:
        """(model, params) a generator decodes for `prompt`: the target, or with a
        transform the transformed target (e.g. under the prompt's grammar)."""
        if self.transform is None:
            return self.target_cfg, self.target_params
        return self.transform.wrap(self.target_cfg, self.target_params, prompt, self.tokenizer)

    def draft(self, self_layers: int | None = None) -> tuple[ModelConfig, Any]:
        """The draft model: an explicit one, or the target's first `self_layers`
        layers (default: the `self_layers` entry of `args`)."""
        if self.draft_cfg is not None:
            return self.draft_cfg, self.draft_params
        if self_layers is None:
            self_layers = settings.convert(self.args.get("self_layers"), int | None, "self_layers")
        if self_layers is None:
            raise ValueError("this method needs a draft model: set config.draft_model, or "
                             "self_layers=L to draft with the target's first L layers")
        return first_layers(self.target_cfg, self.target_params, self_layers)


# -- settings of the methods ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelfDraft:
    """Without config.draft_model, the draft is the target's first `self_layers` layers
    (`models.params.first_layers`)."""

    self_layers: int | None = None


@dataclasses.dataclass(frozen=True)
class LengthPolicy:
    """A length policy for a draft-model method: a `policies.parse` spec, e.g.
    "confidence:threshold=0.5" ("none": verify every drafted node)."""

    policy: str = "none"


@dataclasses.dataclass(frozen=True)
class Widths:
    """With a policy, the target widths the loop may verify ("1.2.4"; the drafter's
    node count is added; `decode.Method.widths`). None: `decode.Method`'s default."""

    widths: tuple[int, ...] | None = None


# SmartSpec's draft queues up to this many committed tokens on steps that
# draft nothing (K = 0) and forwards them together (`DraftModel.max_pending`)
SMARTSPEC_MAX_PENDING = 4


@dataclasses.dataclass(frozen=True)
class AdaptiveChain:
    """A chain of up to `max_k` drafts under a length policy; the draft queues up to
    `max_pending` tokens on steps that draft nothing (`DraftModel.chain`)."""

    max_k: int = 8
    max_pending: int = 1


@dataclasses.dataclass(frozen=True)
class SmartSpecChain(AdaptiveChain):
    """SmartSpec's chain; without explicit step_costs they are measured:
    `step_cost_source` "loop" (the loop's own step time, `bench.step_costs`) or
    "bare" (bare forwards)."""

    max_pending: int = SMARTSPEC_MAX_PENDING
    step_cost_source: str = "loop"


@dataclasses.dataclass(frozen=True)
class DraftTree:
    """sd_tree's tree: per-depth branching ("3.2.1.1", SpecInfer-style top-k) or
    "sequoia:PATH[@N]"; `tree_verifier` (sampling only) is a `TREE_VERIFIERS` name."""

    tree: str
    tree_verifier: str = "rrs_wor"


@dataclasses.dataclass(frozen=True)
class SequoiaTree:
    """A Sequoia template file (`python -m experiments.sequoia_tree --out=PATH`)."""

    sequoia_tree: str = ""
    tree_verifier: str = "rrs_wor"


@dataclasses.dataclass(frozen=True)
class PearlGamma:
    """PEARL's draft length: an int, or "auto" = the measured target/draft forward-time
    ratio (`pearl.measure_gamma`)."""

    gamma: int | str = "auto"


@dataclasses.dataclass(frozen=True)
class CascadeBottom:
    """CS Drafting's statistical bottom drafter: "maxgram" (the paper's MaG) or "bigram"."""

    bottom: str = "maxgram"


@dataclasses.dataclass(frozen=True)
class Datastore:
    """A REST datastore file (`python -m experiments.build_datastore --out=PATH`)."""

    datastore: str = ""


@dataclasses.dataclass(frozen=True)
class RasdDraftTree:
    """RASD's draft-model top-k tree: per-depth branching."""

    tree: tuple[int, ...] = (2, 1)


@dataclasses.dataclass(frozen=True)
class Part:
    """Settings from the fields of `source` (a dataclass or function, `settings.fields`)
    without `exclude` (set by the builder), named `prefix + field`."""

    source: Any
    exclude: tuple[str, ...] = ()
    prefix: str = ""

    def fields(self) -> dict[str, settings.Field]:
        return {self.prefix + n: f for n, f in settings.fields(self.source, self.exclude).items()}


class Settings(dict):
    """A method's resolved settings by name (REQUIRED where a derived one was not given)."""

    def __init__(self, values: Mapping[str, Any], parts: tuple[Part, ...]):
        super().__init__(values)
        self.parts = parts

    def of(self, source) -> dict[str, Any]:
        """The keyword arguments of `source` (one of the parts) from these settings."""
        part = next(p for p in self.parts if p.source == source)
        return {n: self[part.prefix + n] for n in settings.fields(part.source, part.exclude)
                if self[part.prefix + n] is not settings.REQUIRED}


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A registered method: its builder `make(ctx, settings)` and the parts whose fields
    are its settings (`derived`: required fields the builder fills when not given, and
    from what)."""

    name: str
    paper: str
    lossless: str  # "yes", "greedy only", "no"
    needs: str
    make: Callable[[BuildContext, Settings], Any]
    parts: tuple[Part, ...] = ()
    derived: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def fields(self) -> dict[str, settings.Field]:
        out: dict[str, settings.Field] = {}
        for part in self.parts:
            for name, f in part.fields().items():
                if name in out:
                    raise ValueError(f"method {self.name!r}: two parts have the setting {name!r}")
                out[name] = f
        return out

    def settings(self, args: Mapping[str, Any]) -> Settings:
        """This method's settings from `args` (`BuildContext.args`), see the module docstring.

        Raises:
          ValueError: an unknown key or section, a bad value, a missing required setting.
        """
        fields = self.fields()
        section = args.get(self.name, {})
        if not isinstance(section, Mapping):
            raise ValueError(f"config.draft.{self.name} must be a section of {self.name}'s "
                             f"settings, got {section!r}")
        given = flatten(section)
        _check_keys(self, given, f"config.draft.{self.name}", fields)
        known = all_settings()
        for key, value in args.items():
            if isinstance(value, Mapping):
                if key not in REGISTRY:
                    raise ValueError(f"config.draft.{key} is a section, but {key!r} is no "
                                     f"method; registered: {sorted(REGISTRY)}")
            elif key in fields:
                given.setdefault(key, value)  # the method's own section wins
            elif key not in known:
                _check_keys(self, {key: value}, "config.draft / the overrides", fields)
        values = {}
        for name, f in fields.items():
            if name in given:
                values[name] = settings.convert(given[name], f.type, f"{self.name}'s {name}")
            elif f.default is not settings.REQUIRED or name in self.derived:
                values[name] = f.default
            else:
                raise ValueError(f"method {self.name!r} needs {name} ({settings.type_name(f.type)}):"
                                 f" {self.name}/{name}=VALUE or config.draft.{self.name}.{name}")
        return Settings(values, self.parts)

    def method(self, ctx: BuildContext):
        """What the builder returns: a `Speculative` or (no `decode.Method`) a `Generator`."""
        return self.make(ctx, self.settings(ctx.args))

    def build(self, ctx: BuildContext) -> Generator:
        """The runner's `Generator` of this method in `ctx`."""
        built = self.method(ctx)
        return _generator(ctx, built) if isinstance(built, Speculative) else built


def with_overrides(args: Mapping[str, Any], name: str, over: Mapping[str, Any]) -> dict:
    """`args` with a method's overrides (`registry.parse`'s `sd_chain/k=4`) put in its
    section, so they win over both the section and the top-level keys."""
    return {**args, name: {**flatten(args.get(name, {})), **over}}


def flatten(section: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"retrieval": {"num_nodes": 8}} -> {"retrieval.num_nodes": 8} (a nested drafter's
    settings, `Part.prefix`)."""
    out = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# the prefixed names of the hand-written builders -> the fields' names (error hints only)
RENAMED = {
    **{f"pld_{k}": f"pld/{k}" for k in ("max_ngram", "min_ngram", "earliest", "periodic")},
    "pld_drafts": "pld/num_drafts", "tr_k": "token_recycling/k",
    "tr_template": "token_recycling/template", "aded_k": "aded/k", "aded_slots": "aded/slots",
    "aded_template": "aded/template", "aded_c": "aded/c_puct",
    "kangaroo_layer": "kangaroo/exit_layer", "kangaroo_k": "kangaroo/num_drafts",
    "kangaroo_threshold": "kangaroo/threshold",
    **{f"swift_{k}": f"swift/{k}" for k in ("threshold", "window", "opt_steps", "granularity",
                                           "bo_every")},
    "swift_ratio": "swift/skip_ratio", "swift_k": "swift/num_drafts",
    "bigram_drafts": "bigram/num_drafts", "bigram_k": "bigram/k (max_gram/k, cs_drafting/k)",
    "mag_drafts": "max_gram/num_drafts", "mag_max_n": "max_gram/max_n (cs_drafting/max_n)",
    "mag_earliest": "max_gram/earliest (cs_drafting/earliest)",
    "cs_model": "cs_drafting/model_positions", "cs_bigram": "cs_drafting/bigram_positions",
    "cs_lookahead": "cs_drafting/lookahead", "cs_vertical": "cs_drafting/vertical",
    "cs_bottom": "cs_drafting/bottom",
    **{f"ret_{k}": f"retrieval/{k}" for k in ("depth", "max_ngram", "min_ngram")},
    "ret_nodes": "retrieval/num_nodes (rasd/retrieval.num_nodes)",
    "ret_continuations": "retrieval/num_continuations",
    "rasd_tree": "rasd/tree", "rasd_nodes": "rasd/num_nodes", "rasd_prune_topk": "rasd/prune_topk",
    "dyspec_nodes": "dyspec/num_nodes", "dyspec_k": "dyspec/top_k",
    "dyspec_per_round": "dyspec/nodes_per_round", "beam": "rsd_s/beam_width",
    "pearl_gamma": "pearl/gamma", "initial_k": "sd_schedule/initial",
}


def _check_keys(info: MethodInfo, given: Mapping[str, Any], where: str, fields=None):
    fields = info.fields() if fields is None else fields
    for key in given:
        if key not in fields:
            hint = f" (renamed: {RENAMED[key]})" if key in RENAMED else ""
            raise ValueError(f"unknown setting {key!r}{hint} of method {info.name!r} in {where}; "
                             f"valid: {sorted(fields)}")


def all_settings() -> set[str]:
    """Every registered method's setting names (and `PEER_SETTINGS`)."""
    return {n for m in REGISTRY.values() for n in m.fields()} | set(PEER_SETTINGS)


# -- builders ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Speculative:
    """A built speculative method: its name, `decode.Method` and the drafter's params."""

    name: str
    method: decode.Method
    draft_params: Any = None


def _generator(ctx: BuildContext, built: Speculative) -> Generator:
    """A `Generator` running `speculative_generate` with the built method."""

    def fn(ids, prompt=None):
        model, params = ctx.target_for(prompt)
        g = decode.speculative_generate(
            params, model, [ids], method=built.method,
            draft_params=built.draft_params, max_new_tokens=ctx.max_new_tokens,
            sampling=ctx.sampling, key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]),
                         steps=int(g.steps[0]), accept_hist=g.accept_hist[0].tolist())

    return Generator(built.name, fn, with_prompt=ctx.transform is not None)


def _speculative(name: str, drafter, verifier, draft_params=None, policy=None,
                 widths: tuple[int, ...] | None = None) -> Speculative:
    """drafter x policy x verifier, lossless (`decode.Method` refuses other pairs through
    `laws.check_composition`); with a policy, `widths` (+ the node count) are the
    verification widths and the name gets "+PolicyName"."""
    if policy is None:
        return Speculative(name, decode.Method(drafter=drafter, verifier=verifier), draft_params)
    return Speculative(f"{name}+{type(policy).__name__}",
                       decode.Method(drafter=drafter, verifier=verifier, policy=policy,
                                     widths=with_node_count(widths, drafter.num_nodes)),
                       draft_params)


def with_node_count(widths: tuple[int, ...] | None, num_nodes: int) -> tuple[int, ...] | None:
    """`widths` + the node count, those <= it, sorted; None stays None."""
    if not widths:
        return None
    return tuple(sorted({w for w in (*widths, num_nodes) if w <= num_nodes}))


def autoregressive(ctx: BuildContext, s: Settings) -> Generator:
    def fn(ids, prompt=None):
        model, params = ctx.target_for(prompt)
        g = decode.autoregressive_generate(
            params, model, [ids], max_new_tokens=ctx.max_new_tokens,
            sampling=ctx.sampling, key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]))

    return Generator("autoregressive", fn, with_prompt=ctx.transform is not None)


STEP_COST_SOURCES = ("loop", "bare")


def measured_step_costs(ctx: BuildContext, draft, max_k: int = 8, batch: int = 1,
                        context: int = 256, max_pending: int = 1,
                        widths: tuple[int, ...] | None = None,
                        source: str = "loop") -> tuple[float, ...]:
    """SmartSpec's step costs T(0..max_k) of this model pair at `batch` rows with
    `context` cached tokens, rounded to 4 decimals: "loop" = the speculative loop's
    own step time (`bench.step_costs.calibrate`), "bare" = its bare forwards only
    (`policies.measure_step_costs`). `widths`: the loop's verification widths."""
    if source not in STEP_COST_SOURCES:
        raise ValueError(f"unknown step cost source {source!r}; valid: {STEP_COST_SOURCES}")
    dcfg, dparams = draft
    args = (DecoderLM(ctx.target_cfg), ctx.target_params, DecoderLM(dcfg), dparams)
    kw = dict(batch=batch, max_k=max_k, context=context, max_pending=max_pending, widths=widths)
    costs = (step_costs_lib.calibrate(*args, **kw).costs if source == "loop"
             else policies.measure_step_costs(*args, **kw))
    return tuple(round(float(c), 4) for c in costs)


def length_policy(ctx: BuildContext, spec: str | None = None, max_k: int = 8, batch: int = 1,
                  context: int = 256, max_pending: int = 1, draft=None,
                  widths: tuple[int, ...] | None = None, source: str = "loop"):
    """The policy named by `spec` (default: the `policy` entry of `ctx.args`, "none").

    `goodput` without `step_costs` measures them for this model pair
    (`measured_step_costs` from `source`; `draft` default `ctx.draft()`; `widths`
    the loop's verification widths).
    """
    spec = str(ctx.args.get("policy", "none") if spec is None else spec)
    if spec.partition(":")[0] == "goodput" and "step_costs" not in spec:
        costs = measured_step_costs(ctx, draft or ctx.draft(), max_k, batch, context, max_pending,
                                    widths, source)
        sep = "," if ":" in spec else ":"
        spec = f"{spec}{sep}step_costs={settings.show(costs)}"
    return policies.parse(spec)


# The sampling verifier registered methods use for each draft law (`specjax.verify.laws`):
# the best lossless rule for it; greedy decoding always verifies greedily.
SAMPLING_VERIFIERS: dict[str, Callable[[Any], Any]] = {
    laws.IID: lambda d: verify.chain_sampling,  # chains: draft model, self-drafts, cascades
    laws.POINT_MASS: lambda d: verify.chain_sampling,  # prompt lookup, n-gram drafters
    laws.WITHOUT_REPLACEMENT: lambda d: verify.tree_rrs(replacement=False,
                                                        max_children=d.max_children),
    laws.GREEDY_DRAFT: lambda d: verify.tree_greedy_draft(),
    laws.DETERMINISTIC_TREE: lambda d: verify.deterministic_tree(d.max_children),
    laws.TOPK: lambda d: verify.deterministic_tree(getattr(d, "max_children", None)),
}


def verifier_for(sampling: Sampling, drafter, sampled=None):
    """The verifier of `drafter` under `sampling`: `verify.greedy` at temperature 0, else
    `sampled` (a user's choice, e.g. sd_tree's tree_verifier) or the drafter's draft law's
    `SAMPLING_VERIFIERS` entry. `_speculative` checks the pair."""
    if sampling.greedy:
        return verify.greedy
    return sampled if sampled is not None else SAMPLING_VERIFIERS[laws.draft_law(drafter)](drafter)


def _draft(ctx: BuildContext, s: Settings):
    return ctx.draft(s["self_layers"])


def sd_chain(ctx: BuildContext, s: Settings) -> Speculative:
    """Chain of k drafts; `policy=NAME:key=value,...` adds a length policy
    (`specjax.policies.parse`), e.g. sd_chain/k=8/policy=confidence:threshold=0.5."""
    dcfg, dparams = draft = _draft(ctx, s)
    k, pend = s["k"], s["max_pending"]
    policy = length_policy(ctx, s["policy"], max_k=k, max_pending=pend, draft=draft,
                           widths=with_node_count(s["widths"], k + 1))
    d = DraftModel.chain(DecoderLM(dcfg), k, pend)
    return _speculative(f"sd_chain(k={k})", d, verifier_for(ctx.sampling, d), dparams, policy,
                        s["widths"])


def _adaptive_chain(label: str, policy_of: Callable[[BuildContext, Settings, Any], Any]):
    """A chain of `max_k` drafts (`AdaptiveChain`) under the policy `policy_of(ctx, s, draft)`."""

    def build(ctx: BuildContext, s: Settings) -> Speculative:
        dcfg, dparams = draft = _draft(ctx, s)
        k = s["max_k"]
        d = DraftModel.chain(DecoderLM(dcfg), k, s["max_pending"])
        return _speculative(f"{label}(max_k={k})", d, verifier_for(ctx.sampling, d), dparams,
                            policy_of(ctx, s, draft), s["widths"])

    return build


sd_schedule = _adaptive_chain("sd_schedule", lambda ctx, s, _: policies.Schedule(
    **{**s.of(policies.Schedule), "initial": min(s["initial"], s["max_k"])}, max_k=s["max_k"]))
sd_confidence = _adaptive_chain(
    "sd_confidence", lambda ctx, s, _: policies.Confidence(**s.of(policies.Confidence)))
specdecpp = _adaptive_chain(
    "specdecpp", lambda ctx, s, _: policies.SpecDecPP(**s.of(policies.SpecDecPP)))
smartspec = _adaptive_chain("smartspec", lambda ctx, s, draft: policies.Goodput(**{
    **s.of(policies.Goodput),
    "step_costs": s["step_costs"] if s["step_costs"] is not settings.REQUIRED else
    measured_step_costs(ctx, draft, s["max_k"], max_pending=s["max_pending"],
                        widths=with_node_count(s["widths"], s["max_k"] + 1),
                        source=s["step_cost_source"])}))


# tree_verifier of sd_tree (sampling only): name -> (child rule, verifier factory)
TREE_VERIFIERS = {
    "rrs_wor": ("without_replacement", lambda: verify.tree_rrs(replacement=False)),  # RSD-C
    "rrs": ("iid", lambda: verify.tree_rrs(replacement=True)),  # SpecInfer multi-round
    "kseq": ("iid", lambda: verify.tree_kseq()),  # SpecTr K-SEQ (OT), arXiv:2310.15141
    "greedy_draft": ("greedy_draft", lambda: verify.tree_greedy_draft()),
}


def sd_tree(ctx: BuildContext, s: Settings) -> Speculative:
    """Tree from the draft model with tree verification. tree = per-depth branching
    ("3.2.1.1", SpecInfer-style top-k) or "sequoia:PATH[@N]" (a Sequoia template written by
    `python -m experiments.sequoia_tree`, arXiv:2402.12374). When sampling, tree_verifier
    picks the multi-draft rule and the matching draft law (`TREE_VERIFIERS`: rrs_wor =
    RSD-C, the default; rrs = SpecInfer; kseq = SpecTr; greedy_draft); greedy decoding
    always drafts the top-k and verifies greedily."""
    spec = s["tree"]
    if spec.startswith("sequoia:"):
        from specjax.trees import sequoia

        parents = sequoia.template_parents(spec)
        path, _ = sequoia.parse_spec(spec)
        label = f"sequoia:{path.stem}@{len(parents) - 1}"
    else:
        branching = settings.convert(spec, tuple[int, ...], f"{spec!r} as the tree")
        parents = tuple(trees.template_topology(list(branching)).tolist())
        label = spec
    name = s["tree_verifier"]
    if name not in TREE_VERIFIERS:
        raise ValueError(f"unknown tree_verifier {name!r}; valid: {sorted(TREE_VERIFIERS)}")
    if ctx.sampling.greedy:
        rule, sampled = "topk", None
    else:
        rule, sampled = TREE_VERIFIERS[name][0], TREE_VERIFIERS[name][1]()
        label = label if name == "rrs_wor" else f"{label},{name}"
    dcfg, dparams = draft = _draft(ctx, s)
    policy = length_policy(ctx, s["policy"], draft=draft)
    d = DraftModel(DecoderLM(dcfg), parents, rule, **s.of(DraftModel))
    return _speculative(f"sd_tree({label})", d, verifier_for(ctx.sampling, d, sampled), dparams,
                        policy, s["widths"])


def sequoia_tree(ctx: BuildContext, s: Settings) -> Speculative:
    """Sequoia static tree: sequoia_tree=PATH[@N] (a template file, `experiments.sequoia_tree`)."""
    if not s["sequoia_tree"]:
        raise ValueError("this method needs sequoia_tree=PATH[@N] (write one with "
                         "`python -m experiments.sequoia_tree --out=PATH`)")
    return sd_tree(ctx, Settings({**s, "tree": f"sequoia:{s['sequoia_tree']}"},
                                 REGISTRY["sd_tree"].parts))


def dyspec(ctx: BuildContext, s: Settings) -> Speculative:
    """DySpec dynamic tree from the draft model (`DySpec` fields num_nodes, top_k,
    nodes_per_round; 1 = the paper's one node per draft forward)."""
    from specjax.drafters.dyspec import DySpec

    dcfg, dparams = _draft(ctx, s)
    d = DySpec(DecoderLM(dcfg), **s.of(DySpec))
    return _speculative(f"dyspec(N={d.num_nodes},R={d.nodes_per_round})", d,
                        verifier_for(ctx.sampling, d), dparams)


def rsd_s(ctx: BuildContext, s: Settings) -> Speculative:
    """RSD-S: stochastic-beam-search draft tree (greedy: deterministic beam search);
    `StochasticBeam` fields beam_width, depth, log_threshold."""
    from specjax.drafters.stochastic_beam import StochasticBeam

    dcfg, dparams = _draft(ctx, s)
    d = StochasticBeam(DecoderLM(dcfg), **s.of(StochasticBeam))  # max_children = beam_width
    return _speculative(f"rsd_s(W={d.beam_width},D={d.depth})", d, verifier_for(ctx.sampling, d),
                        dparams)


def pearl(ctx: BuildContext, s: Settings) -> Generator:
    """PEARL: gamma ("auto" = measured target/draft forward-time ratio, or an int)."""
    from specjax.decode import pearl as pearl_lib

    dcfg, dparams = _draft(ctx, s)
    gamma = s["gamma"]
    if gamma == "auto":
        gamma = pearl_lib.measure_gamma(ctx.target_cfg, ctx.target_params, dcfg, dparams)
    elif isinstance(gamma, str):
        raise ValueError(f"pearl's gamma must be an int or 'auto', got {gamma!r}")
    chain = DraftModel.chain(DecoderLM(dcfg), int(gamma))  # what `pearl_generate` drafts with
    verifier = verifier_for(ctx.sampling, chain)
    laws.check_composition(chain, verifier)

    def fn(ids):
        g = pearl_lib.pearl_generate(
            ctx.target_params, ctx.target_cfg, [ids], draft=dcfg, draft_params=dparams,
            gamma=gamma, verifier=verifier, max_new_tokens=ctx.max_new_tokens,
            sampling=ctx.sampling, key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]),
                         steps=int(g.steps[0]), accept_hist=g.accept_hist[0].tolist())

    return Generator(f"pearl(gamma={gamma})", fn)


def pld(ctx: BuildContext, s: Settings) -> Speculative:
    """Prompt lookup; earliest=1/periodic=0 is Spec-Bench's PLD."""
    from specjax.drafters.prompt_lookup import PromptLookup

    d = PromptLookup(ctx.target_cfg.vocab_size, **s.of(PromptLookup))
    return _speculative(f"pld(k={d.num_drafts})", d, verifier_for(ctx.sampling, d))


def token_recycling(ctx: BuildContext, s: Settings) -> Speculative:
    """Token Recycling: template "tr80" or branching "4.2.1"."""
    from specjax.drafters.token_recycling import TokenRecycling

    d = TokenRecycling(ctx.target_cfg.vocab_size, **s.of(TokenRecycling))
    return _speculative(f"token_recycling({settings.show(d.template)})", d,
                        verifier_for(ctx.sampling, d))


def aded(ctx: BuildContext, s: Settings) -> Speculative:
    """ADED: template "tr80" or branching "4.2.1", c_puct the PUCT exploration constant."""
    from specjax.drafters.aded import Aded

    d = Aded(ctx.target_cfg.vocab_size, **s.of(Aded))
    return _speculative(f"aded({settings.show(d.template)},c={d.c_puct:g})", d,
                        verifier_for(ctx.sampling, d))


def kangaroo(ctx: BuildContext, s: Settings) -> Speculative:
    """Kangaroo early exit (adapter-free until the training issue); exit_layer defaults
    to self_layers."""
    from specjax.drafters.kangaroo import Kangaroo

    kw = s.of(Kangaroo)
    kw.setdefault("exit_layer", s["self_layers"])
    if kw["exit_layer"] is None:
        raise ValueError("kangaroo needs exit_layer (or self_layers): kangaroo/exit_layer=L")
    d = Kangaroo(ctx.target_cfg, **kw)
    return _speculative(f"kangaroo(l={d.exit_layer})", d, verifier_for(ctx.sampling, d),
                        ctx.target_params)


def swift(ctx: BuildContext, s: Settings) -> Speculative:
    """SWIFT on-the-fly layer skipping (opt_steps=0: a fixed spaced set; bo_every=0:
    random search only); its search seed is the run's seed."""
    from specjax.drafters.swift import Swift

    d = Swift(ctx.target_cfg, **s.of(Swift), seed=ctx.seed)
    return _speculative(f"swift(r={d.skip_ratio},{d.granularity})", d,
                        verifier_for(ctx.sampling, d), ctx.target_params)


def bigram(ctx: BuildContext, s: Settings) -> Speculative:
    """Bigram drafter (CS Drafting's statistical bottom model)."""
    from specjax.drafters.bigram import Bigram

    d = Bigram(ctx.target_cfg.vocab_size, **s.of(Bigram))
    return _speculative(f"bigram(k={d.num_drafts})", d, verifier_for(ctx.sampling, d))


def max_gram(ctx: BuildContext, s: Settings) -> Speculative:
    """Max-Gram (CS Drafting's MaG): copies what followed the longest earlier match of the
    text's suffix, bigram fallback (earliest=0: the most recent occurrence)."""
    from specjax.drafters.max_gram import MaxGram

    d = MaxGram(ctx.target_cfg.vocab_size, **s.of(MaxGram))
    return _speculative(f"max_gram(k={d.num_drafts})", d, verifier_for(ctx.sampling, d))


def cs_drafting(ctx: BuildContext, s: Settings) -> Speculative:
    """CS Drafting: the draft model drafts the first model_positions, accelerated by the
    statistical bottom drafter (vertical cascade, lookahead proposals per draft forward;
    vertical=0 drafts autoregressively), the bottom drafter alone the next
    bigram_positions. bottom: maxgram (the paper's MaG, with max_n, earliest) | bigram."""
    from specjax.drafters import cascade
    from specjax.drafters.bigram import Bigram
    from specjax.drafters.max_gram import MaxGram

    dcfg, dparams = _draft(ctx, s)
    kind, k, vocab = s["bottom"], s["k"], ctx.target_cfg.vocab_size
    if kind not in ("maxgram", "bigram"):
        raise ValueError(f"cs_drafting's bottom must be maxgram or bigram, got {kind!r}")
    bottom = MaxGram(vocab, k=k, **s.of(MaxGram)) if kind == "maxgram" else Bigram(vocab, k=k)
    kw = s.of(cascade.cs_drafting)
    d = cascade.cs_drafting(DecoderLM(dcfg), **kw, bottom=bottom)
    return _speculative(f"cs_drafting({kw['model_positions']}+{kw['bigram_positions']},{kind})",
                        d, verifier_for(ctx.sampling, d), (dparams, None))


def _datastore(ctx: BuildContext, s: Settings):
    from specjax.drafters.datastore import load_datastore

    if not s["datastore"]:
        raise ValueError("this method needs datastore=PATH (build one with `python -m "
                         "experiments.build_datastore --tokenizer=... --corpus=... --out=PATH`)")
    return load_datastore(s["datastore"], vocab_size=ctx.target_cfg.vocab_size)


def retrieval(ctx: BuildContext, s: Settings) -> Speculative:
    """REST retrieval drafts from datastore=PATH."""
    from specjax.drafters.retrieval import Retrieval

    d = Retrieval(ctx.target_cfg.vocab_size, **s.of(Retrieval))
    return _speculative(f"retrieval(N={d.num_nodes})", d, verifier_for(ctx.sampling, d),
                        _datastore(ctx, s))


def rasd(ctx: BuildContext, s: Settings) -> Speculative:
    """RASD: draft-model top-k tree (tree) + pruned retrieval tree (retrieval.* = the
    `Retrieval` fields), fused (num_nodes, prune_topk); datastore=PATH."""
    from specjax.drafters.rasd import RASD, rasd_params
    from specjax.drafters.retrieval import Retrieval

    dcfg, dparams = _draft(ctx, s)
    parents = tuple(trees.template_topology(list(s["tree"])).tolist())
    d = RASD(DraftModel(DecoderLM(dcfg), parents, "topk"),
             Retrieval(ctx.target_cfg.vocab_size, **s.of(Retrieval)), **s.of(RASD))
    return _speculative(f"rasd(N={d.num_nodes})", d, verifier_for(ctx.sampling, d),
                        rasd_params(dparams, _datastore(ctx, s)))


@dataclasses.dataclass(frozen=True)
class TrainedHead:
    """A trained head: a name under <cache>/heads/ or a directory (`training.assets`;
    `python -m experiments.train`). It must have been trained for this target."""

    head: str = ""


def _trained_head(ctx: BuildContext, s: Settings, kind: str):
    """(head.json, params) of the trained head named by `s["head"]`, checked against the
    target (`training.assets.load_head`) and its kind."""
    from specjax.training import assets

    if not s["head"]:
        raise ValueError(f"{kind} needs a trained head: {kind}/head=NAME_OR_DIR (train one with "
                         f"python -m experiments.train)")
    meta, params = assets.load_head(
        s["head"], assets.target_identity("the loaded target", ctx.target_cfg, ctx.target_params))
    if meta["kind"] != kind:
        raise ValueError(f"head {s['head']!r} is a {meta['kind']!r} head, not {kind!r}")
    return meta, params


def mlp_speculator(ctx: BuildContext, s: Settings) -> Speculative:
    """A trained MLP speculator head (`drafters.mlp_speculator`), its candidate tree."""
    from specjax.drafters import mlp_speculator as ms

    meta, params = _trained_head(ctx, s, "mlp_speculator")
    d = ms.MLPSpeculator(ms.SpeculatorConfig(**meta["config"]), **s.of(ms.MLPSpeculator))
    return _speculative(f"mlp_speculator({settings.show(d.top_k)},W={d.num_candidates})", d,
                        verifier_for(ctx.sampling, d), params)


def medusa(ctx: BuildContext, s: Settings) -> Speculative:
    """Trained Medusa heads (`drafters.medusa`) filling a sparse template tree."""
    from specjax.drafters.medusa import Medusa, MedusaConfig

    meta, params = _trained_head(ctx, s, "medusa")
    d = Medusa(MedusaConfig(**meta["config"]), **s.of(Medusa))
    return _speculative(f"medusa({settings.show(d.template)})", d, verifier_for(ctx.sampling, d),
                        params)


@dataclasses.dataclass(frozen=True)
class DraftVocabulary:
    """full_vocab: draft over the target's whole vocabulary with a head trained on a
    truncated one (FR-Spec's comparison, Zhao et al. arXiv:2502.14856: the layer is
    vocabulary-free; only the frozen LM head's columns change)."""

    full_vocab: bool = False


def _eagle(ctx: BuildContext, s: Settings, cls, label: str) -> Speculative:
    """An EAGLE head (`drafters.eagle`) drafting with tree builder `cls`; the shared
    embedding and LM head come from the loaded target (the asset holds only the
    trained weights and the draft vocabulary)."""
    from specjax.drafters import eagle as eg

    meta, params = _trained_head(ctx, s, "eagle")
    cfg = eg.EagleConfig(**meta["config"])
    if s["full_vocab"]:
        cfg = dataclasses.replace(cfg, draft_vocab=0)
        params = {k: v for k, v in params.items() if k != "vocab_ids"}
    d = cls(cfg, **s.of(cls))
    frozen = eg.frozen_params(cfg, ctx.target_cfg, ctx.target_params, params.get("vocab_ids"))
    name = label(d) + ("[full vocab]" if s["full_vocab"] else "")
    return _speculative(name, d, verifier_for(ctx.sampling, d), {**params, **frozen})


def eagle(ctx: BuildContext, s: Settings) -> Speculative:
    """A trained EAGLE head with EAGLE-1's static tree."""
    from specjax.drafters.eagle import Eagle

    return _eagle(ctx, s, Eagle, lambda d: f"eagle({settings.show(d.template)})")


def eagle2(ctx: BuildContext, s: Settings) -> Speculative:
    """A trained EAGLE head with EAGLE-2's dynamic tree."""
    from specjax.drafters.eagle import Eagle2

    return _eagle(ctx, s, Eagle2,
                  lambda d: f"eagle2(depth={d.depth},top_k={d.top_k},N={d.num_nodes})")


def hydra(ctx: BuildContext, s: Settings) -> Speculative:
    """Trained Hydra heads (`drafters.hydra`) filling a template tree level by level; the
    target's embedding and LM head come from the loaded target (the asset holds only the
    trained weights and the draft vocabulary)."""
    from specjax.drafters import hydra as hy

    meta, params = _trained_head(ctx, s, "hydra")
    cfg = hy.HydraConfig(**meta["config"])
    d = hy.Hydra(cfg, **s.of(hy.Hydra))
    frozen = hy.frozen_params(cfg, ctx.target_cfg, ctx.target_params, params.get("vocab_ids"))
    return _speculative(f"hydra({settings.show(d.template)})", d, verifier_for(ctx.sampling, d),
                        {**params, **frozen})


def _parts() -> dict[str, tuple[Part, ...]]:
    """Each method's settings: the parts it is built from (imported here, not at import
    time of every drafter's dependencies)."""
    from specjax.drafters import cascade
    from specjax.drafters.aded import Aded
    from specjax.drafters.bigram import Bigram
    from specjax.drafters.dyspec import DySpec
    from specjax.drafters.eagle import Eagle, Eagle2
    from specjax.drafters.hydra import Hydra
    from specjax.drafters.kangaroo import Kangaroo
    from specjax.drafters.max_gram import MaxGram
    from specjax.drafters.medusa import Medusa
    from specjax.drafters.mlp_speculator import MLPSpeculator
    from specjax.drafters.prompt_lookup import PromptLookup
    from specjax.drafters.rasd import RASD
    from specjax.drafters.retrieval import Retrieval
    from specjax.drafters.stochastic_beam import StochasticBeam
    from specjax.drafters.swift import Swift
    from specjax.drafters.token_recycling import TokenRecycling

    vocab = ("vocab_size",)
    draft, widths = Part(SelfDraft), Part(Widths)
    chain = (Part(AdaptiveChain), widths, draft)
    tree = (Part(DraftModel, ("parents", "child_rule")), Part(LengthPolicy), widths, draft)
    return {
        "autoregressive": (),
        "sd_chain": (Part(DraftModel.chain), Part(LengthPolicy), widths, draft),
        "sd_tree": (Part(DraftTree), *tree),
        "sequoia": (Part(SequoiaTree), *tree),
        "dyspec": (Part(DySpec), draft),
        "rsd_s": (Part(StochasticBeam), draft),
        "pearl": (Part(PearlGamma), draft),
        "sd_schedule": (Part(policies.Schedule, ("max_k",)), *chain),
        "sd_confidence": (Part(policies.Confidence), *chain),
        "specdecpp": (Part(policies.SpecDecPP), *chain),
        "smartspec": (Part(policies.Goodput), Part(SmartSpecChain), widths, draft),
        "pld": (Part(PromptLookup, vocab),),
        "token_recycling": (Part(TokenRecycling, vocab),),
        "aded": (Part(Aded, vocab),),
        "bigram": (Part(Bigram, vocab),),
        "max_gram": (Part(MaxGram, vocab),),
        "cs_drafting": (Part(cascade.cs_drafting), Part(CascadeBottom),
                        Part(MaxGram, (*vocab, "k", "num_drafts", "max_nodes")), draft),
        "kangaroo": (Part(Kangaroo), draft),
        "swift": (Part(Swift, ("seed",)),),
        "retrieval": (Part(Retrieval, vocab), Part(Datastore)),
        "rasd": (Part(RASD), Part(RasdDraftTree), Part(Retrieval, vocab, "retrieval."),
                 Part(Datastore), draft),
        "mlp_speculator": (Part(TrainedHead), Part(MLPSpeculator, ("config",))),
        "medusa": (Part(TrainedHead), Part(Medusa, ("config", "max_nodes"))),
        "eagle": (Part(TrainedHead), Part(DraftVocabulary), Part(Eagle, ("config", "max_nodes"))),
        "eagle2": (Part(TrainedHead), Part(DraftVocabulary), Part(Eagle2, ("config",))),
        "hydra": (Part(TrainedHead), Part(Hydra, ("config", "max_nodes"))),
        "beam_search": (Part(decoder_methods.BeamSettings),),
        "momentum": (Part(decoder_methods.MomentumSettings),),
        "superposed": (Part(decoder_methods.SuperposedSettings),),
        "rerank": (Part(decoder_methods.RerankSettings),),
    }


_DRAFT = "a draft model (or self_layers)"
_METHODS = [  # name, paper, lossless, needs, builder, derived settings (MethodInfo)
    ("autoregressive", "-", "yes", "nothing", autoregressive, {}),
    ("sd_chain", "Leviathan et al. arXiv:2211.17192; Chen et al. arXiv:2302.01318", "yes",
     _DRAFT, sd_chain, {}),
    ("sd_tree", "SpecInfer arXiv:2305.09781; RSD arXiv:2402.14160", "yes", _DRAFT, sd_tree, {}),
    ("sequoia", "Sequoia, Chen et al. arXiv:2402.12374", "yes",
     f"{_DRAFT} + a template (sequoia_tree=PATH[@N])", sequoia_tree, {}),
    ("dyspec", "DySpec, Xiong et al. arXiv:2410.11744", "yes", _DRAFT, dyspec, {}),
    ("rsd_s", "RSD-S, Jeon et al. arXiv:2402.14160 (stochastic beam search, Kool et al. "
     "arXiv:1903.06059)", "yes", _DRAFT, rsd_s, {}),
    ("pearl", "PEARL, Liu et al. arXiv:2408.11850 (parallel draft/verify, adaptive length)",
     "yes", _DRAFT, pearl, {}),
    ("sd_schedule", "HF assisted generation's heuristic K schedule", "yes", _DRAFT,
     sd_schedule, {}),
    ("sd_confidence", "Kangaroo early stop, Liu et al. arXiv:2404.18911", "yes", _DRAFT,
     sd_confidence, {}),
    ("specdecpp", "SpecDec++, Huang et al. arXiv:2405.19715 (draft-prob acceptance "
     "estimate)", "yes", _DRAFT, specdecpp, {}),
    ("smartspec", "SmartSpec, Liu et al. arXiv:2406.14066", "yes",
     f"{_DRAFT}; measures step costs unless given", smartspec, {"step_costs": "measured"}),
    ("pld", "Saxena 2023 (prompt lookup); Spec-Bench arXiv:2401.07851", "yes", "nothing", pld,
     {}),
    ("token_recycling", "Luo et al. arXiv:2408.08696", "yes", "nothing", token_recycling, {}),
    ("aded", "ADED, Liu et al. arXiv:2407.12021", "yes", "nothing", aded, {}),
    ("bigram", "CS Drafting arXiv:2312.11462 (statistical bottom drafter)", "yes", "nothing",
     bigram, {}),
    ("max_gram", "CS Drafting arXiv:2312.11462 (Max-Gram statistical drafter)", "yes",
     "nothing", max_gram, {}),
    ("cs_drafting", "CS Drafting, Chen et al. arXiv:2312.11462", "yes", _DRAFT, cs_drafting,
     {}),
    ("kangaroo", "Kangaroo, Liu et al. arXiv:2404.18911 (adapter-free early exit)", "yes",
     "nothing (the target's first layers)", kangaroo, {"exit_layer": "self_layers"}),
    ("swift", "SWIFT, Xia et al. arXiv:2410.06916; Draft & Verify arXiv:2309.08168", "yes",
     "nothing (the target with layers skipped)", swift, {}),
    ("retrieval", "REST, He et al. arXiv:2311.08252", "yes", "a datastore (datastore=PATH)",
     retrieval, {}),
    ("rasd", "RASD, Quan et al. arXiv:2503.03434", "yes", f"{_DRAFT} + a datastore", rasd, {}),
    ("mlp_speculator", "MLP speculator, Wertheimer et al. arXiv:2404.19124", "yes",
     "a trained head (head=NAME, experiments.train)", mlp_speculator, {}),
    ("medusa", "Medusa, Cai et al. arXiv:2401.10774", "yes",
     "trained heads (head=NAME, experiments.train)", medusa, {}),
    ("eagle", "EAGLE, Li et al. arXiv:2401.15077 (static tree)", "yes",
     "a trained EAGLE head (head=NAME, experiments.train)", eagle, {}),
    ("eagle2", "EAGLE-2, Li et al. arXiv:2406.16858 (dynamic tree)", "yes",
     "a trained EAGLE head (head=NAME, experiments.train)", eagle2, {}),
    ("hydra", "Hydra, Ankner et al. arXiv:2402.05109", "yes",
     "trained Hydra heads (head=NAME, experiments.train)", hydra, {}),
    # other decoders (`bench.decoder_methods`): their own outputs, not the target's law
    ("beam_search", "(diverse) beam search, Vijayakumar et al. arXiv:1610.02424", "no",
     "nothing", decoder_methods.beam_search, {}),
    ("momentum", "momentum decoding, Lan et al. arXiv:2212.02175", "no", "nothing",
     decoder_methods.momentum, {}),
    ("superposed", "superposed decoding, Shen et al. arXiv:2405.18400", "no",
     "nothing (n-grams from the prompt)", decoder_methods.superposed, {}),
    ("rerank", "RankGen-style reranking, Krishna et al. arXiv:2205.09726", "no",
     "nothing (the target scores)", decoder_methods.rerank, {}),
]
_PARTS = _parts()
REGISTRY: dict[str, MethodInfo] = {
    name: MethodInfo(name, paper, lossless, needs, make, _PARTS[name], derived)
    for name, paper, lossless, needs, make, derived in _METHODS
}


def parse(spec: str) -> tuple[MethodInfo, dict]:
    """`"sd_chain/k=6/self_layers=12"` -> (the registered method, its overrides as strings).

    Raises:
      ValueError: an unknown method, an override that is not key=value, one the method
        does not take (listing the valid ones) or a value its type does not accept.
    """
    # split at "/key=" only, so values may be paths ("retrieval/datastore=ds/x.npz")
    name, *over = re.split(r"/(?=[A-Za-z_][A-Za-z0-9_.]*=)", spec.strip())
    if "/" in name:
        name, bad = name.split("/", 1)
        over.insert(0, bad)
    args = {}
    for kv in over:
        if "=" not in kv:
            raise ValueError(f"method override {kv!r} in {spec!r} is not key=value")
        k, v = kv.split("=", 1)
        args[k] = v
    info = get(name)
    fields = info.fields()
    _check_keys(info, args, f"{spec!r}", fields)
    for k, v in args.items():
        settings.convert(v, fields[k].type, f"{info.name}'s {k} in {spec!r}")
    return info, args


def get(name: str) -> MethodInfo:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def table() -> str:
    """The registered methods, with their settings and defaults (`--list`)."""
    lines = ["| method | paper | lossless | needs | settings (default) |", "|---|---|---|---|---|"]
    for m in REGISTRY.values():
        fields = ", ".join(f"{n}={_shown_default(m, n, f)}" for n, f in m.fields().items())
        lines.append(f"| {m.name} | {m.paper} | {m.lossless} | {m.needs} | {fields or '-'} |")
    return "\n".join(lines)


def _shown_default(info: MethodInfo, name: str, field: settings.Field) -> str:
    if name in info.derived:
        return f"<{info.derived[name]}>"
    return '""' if field.default == "" else settings.show(field.default)

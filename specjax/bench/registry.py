"""Named methods: every runnable method is drafter x policy x verifier with defaults.

`python -m experiments.run --list` prints this table. A config names methods
(`config.methods = "autoregressive,sd_chain,sd_chain/k=6"`) and may override
their hyperparameters for all methods (`--config.draft.k=6`) or per method
(`sd_chain/k=6`). Builders get a `BuildContext` with the
loaded target (and draft) and return a `Generator` for the runner.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax

from specjax import decode, policies, trees, verify
from specjax.bench.runner import GenResult, Generator
from specjax.drafters.draft_model import DraftModel
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers
from specjax.sampling import Sampling


@dataclasses.dataclass
class BuildContext:
    """What builders may use: the target, an optional draft model, run settings."""

    target_cfg: ModelConfig
    target_params: Any
    max_new_tokens: int
    sampling: Sampling
    eos_ids: tuple[int, ...]
    draft_cfg: ModelConfig | None = None
    draft_params: Any = None
    args: dict = dataclasses.field(default_factory=dict)  # config.draft as a dict
    seed: int = 0

    def draft(self) -> tuple[ModelConfig, Any]:
        """The draft model: an explicit one, or the target's first `self_layers` layers."""
        if self.draft_cfg is not None:
            return self.draft_cfg, self.draft_params
        return first_layers(self.target_cfg, self.target_params, int(self.args["self_layers"]))


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    name: str
    paper: str
    lossless: str  # "yes", "greedy only", "no"
    needs: str
    build: Callable[[BuildContext], Generator]


def autoregressive(ctx: BuildContext) -> Generator:
    def fn(ids):
        g = decode.autoregressive_generate(
            ctx.target_params, ctx.target_cfg, [ids], max_new_tokens=ctx.max_new_tokens,
            sampling=ctx.sampling, key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]))

    return Generator("autoregressive", fn)


def _spec_generator(name: str, ctx: BuildContext, drafter, verifier,
                    draft_params=None, policy=None) -> Generator:
    """A `Generator` running `speculative_generate` with drafter x policy x verifier.

    With a policy, `widths=1.2.4.9` (an override) sets the verification widths
    (`decode.Method.widths`; default: 1..8, powers of two, N)."""
    widths = method_widths(ctx.args, drafter.num_nodes) if policy is not None else None
    method = decode.Method(drafter=drafter, verifier=verifier, policy=policy, widths=widths)

    def fn(ids):
        g = decode.speculative_generate(
            ctx.target_params, ctx.target_cfg, [ids], method=method, draft_params=draft_params,
            max_new_tokens=ctx.max_new_tokens, sampling=ctx.sampling,
            key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]),
                         steps=int(g.steps[0]), accept_hist=g.accept_hist[0].tolist())

    return Generator(name, fn)


def method_widths(args: dict, num_nodes: int) -> tuple[int, ...] | None:
    """The `widths=1.2.4` override as verification widths (+ the node count); None if unset."""
    spec = args.get("widths")
    if not spec:
        return None
    w = tuple(int(x) for x in str(spec).split(".")) + (num_nodes,)
    return tuple(sorted(set(x for x in w if x <= num_nodes)))


# SmartSpec's draft queues up to this many committed tokens on steps that
# draft nothing (K = 0) and forwards them together (`DraftModel.max_pending`)
SMARTSPEC_MAX_PENDING = 4


def length_policy(ctx: BuildContext, spec: str | None = None, max_k: int = 8, batch: int = 1,
                  context: int = 256, max_pending: int = 1):
    """The policy named by `spec` (default: the `policy` override, "none").

    `goodput` without `step_costs` measures them for this model pair at `batch`
    rows with `context` cached tokens (`policies.measure_step_costs`, k = 0..max_k,
    the draft queueing up to `max_pending` tokens on steps that draft nothing).
    """
    spec = str(ctx.args.get("policy", "none") if spec is None else spec)
    if spec.partition(":")[0] == "goodput" and "step_costs" not in spec:
        dcfg, dparams = ctx.draft()
        costs = policies.measure_step_costs(
            DecoderLM(ctx.target_cfg), ctx.target_params, DecoderLM(dcfg), dparams,
            batch=batch, max_k=max_k, context=context, max_pending=max_pending)
        sep = "," if ":" in spec else ":"
        spec = f"{spec}{sep}step_costs={';'.join(f'{c:.4f}' for c in costs)}"
    return policies.parse(spec)


def _draft_model_generator(name: str, ctx: BuildContext, drafter_of, verifier,
                           policy=None) -> Generator:
    dcfg, dparams = ctx.draft()
    if policy is not None:
        name = f"{name}+{type(policy).__name__}"
    return _spec_generator(name, ctx, drafter_of(DecoderLM(dcfg)), verifier, dparams, policy)


def chain_verifier(sampling: Sampling):
    return verify.greedy if sampling.greedy else verify.chain_sampling


def sd_chain(ctx: BuildContext) -> Generator:
    """Chain of k drafts; `policy=NAME:key=value,...` adds a length policy
    (`specjax.policies.parse`), e.g. sd_chain/k=8/policy=confidence:threshold=0.5."""
    k = int(ctx.args["k"])
    return _draft_model_generator(f"sd_chain(k={k})", ctx, lambda m: DraftModel.chain(m, k),
                                  chain_verifier(ctx.sampling), length_policy(ctx, max_k=k))


def _adaptive_chain(label: str, policy_of: Callable[[dict], str], max_pending: int = 1):
    """A chain of `max_k` drafts (default 8) under the policy `policy_of(args)`; the
    draft queues up to `max_pending` (override) tokens on steps that draft nothing."""

    def build(ctx: BuildContext) -> Generator:
        k = int(ctx.args.get("max_k", 8))
        pend = int(ctx.args.get("max_pending", max_pending))
        policy = length_policy(ctx, policy_of(ctx.args), max_k=k, max_pending=pend)
        return _draft_model_generator(f"{label}(max_k={k})", ctx,
                                      lambda m: DraftModel.chain(m, k, pend),
                                      chain_verifier(ctx.sampling), policy)

    return build


sd_schedule = _adaptive_chain(
    "sd_schedule", lambda a: f"schedule:max_k={int(a.get('max_k', 8))},"
                             f"initial={min(int(a.get('initial_k', 5)), int(a.get('max_k', 8)))}")
sd_confidence = _adaptive_chain(
    "sd_confidence", lambda a: f"confidence:threshold={float(a.get('threshold', 0.5))}")
specdecpp = _adaptive_chain(
    "specdecpp", lambda a: f"specdecpp:threshold={float(a.get('threshold', 0.3))}")
smartspec = _adaptive_chain("smartspec", lambda a: "goodput", SMARTSPEC_MAX_PENDING)


# tree_verifier override of sd_tree (sampling only): name -> (child rule, verifier factory)
TREE_VERIFIERS = {
    "rrs_wor": ("without_replacement", lambda: verify.tree_rrs(replacement=False)),  # RSD-C
    "rrs": ("iid", lambda: verify.tree_rrs(replacement=True)),  # SpecInfer multi-round
    "kseq": ("iid", lambda: verify.tree_kseq()),  # SpecTr K-SEQ (OT), arXiv:2310.15141
    "greedy_draft": ("greedy_draft", lambda: verify.tree_greedy_draft()),
}


def sd_tree(ctx: BuildContext) -> Generator:
    """Tree from the draft model with tree verification. tree = per-depth branching
    ("3.2.1.1", SpecInfer-style top-k) or "sequoia:PATH[@N]" (a Sequoia template written by
    `python -m experiments.sequoia_tree`, arXiv:2402.12374). When sampling, tree_verifier
    picks the multi-draft rule and the matching draft law (`TREE_VERIFIERS`: rrs_wor =
    RSD-C, the default; rrs = SpecInfer; kseq = SpecTr; greedy_draft); greedy decoding
    always drafts the top-k and verifies greedily."""
    spec = str(ctx.args["tree"])
    if spec.startswith("sequoia:"):
        from specjax import sequoia

        parents = sequoia.template_parents(spec)
        path, _ = sequoia.parse_spec(spec)
        label = f"sequoia:{path.stem}@{len(parents) - 1}"
    else:
        branching = tuple(int(b) for b in spec.split("."))
        parents = tuple(trees.template_topology(list(branching)).tolist())
        label = spec
    name = str(ctx.args.get("tree_verifier", "rrs_wor"))
    if name not in TREE_VERIFIERS:
        raise ValueError(f"unknown tree_verifier {name!r}; valid: {sorted(TREE_VERIFIERS)}")
    if ctx.sampling.greedy:
        rule, verifier = "topk", verify.greedy
    else:
        rule, verifier = TREE_VERIFIERS[name][0], TREE_VERIFIERS[name][1]()
        label = label if name == "rrs_wor" else f"{label},{name}"
    return _draft_model_generator(f"sd_tree({label})", ctx,
                                  lambda m: DraftModel(m, parents, rule), verifier, length_policy(ctx))


def sequoia_tree(ctx: BuildContext) -> Generator:
    """Sequoia static tree: sequoia_tree=PATH[@N] (a template file, `experiments.sequoia_tree`)."""
    if not ctx.args.get("sequoia_tree"):
        raise ValueError("this method needs sequoia_tree=PATH[@N] (write one with "
                         "`python -m experiments.sequoia_tree --out=PATH`)")
    return sd_tree(dataclasses.replace(
        ctx, args={**ctx.args, "tree": f"sequoia:{ctx.args['sequoia_tree']}"}))


def dyspec(ctx: BuildContext) -> Generator:
    """DySpec dynamic tree from the draft model: overrides dyspec_nodes (16), dyspec_k (8),
    dyspec_per_round (4; 1 = the paper's one node per draft forward)."""
    from specjax.drafters.dyspec import DySpec

    a = ctx.args
    dcfg, dparams = ctx.draft()
    d = DySpec(DecoderLM(dcfg), num_nodes=int(a.get("dyspec_nodes", 16)),
               top_k=int(a.get("dyspec_k", 8)),
               nodes_per_round=int(a.get("dyspec_per_round", 4)))
    verifier = (verify.greedy if ctx.sampling.greedy
                else verify.tree_rrs(replacement=False, max_children=d.max_children))
    return _spec_generator(f"dyspec(N={d.num_nodes},R={d.nodes_per_round})", ctx, d,
                           verifier, dparams)


def rsd_s(ctx: BuildContext) -> Generator:
    """RSD-S: stochastic-beam-search draft tree (greedy: deterministic beam search).
    Overrides: beam (W, 3), depth (D, 4), log_threshold (none)."""
    from specjax.drafters.stochastic_beam import StochasticBeam

    w, d = int(ctx.args.get("beam", 3)), int(ctx.args.get("depth", 4))
    thr = ctx.args.get("log_threshold")
    thr = None if thr in (None, "", "none") else float(thr)
    verifier = (verify.greedy if ctx.sampling.greedy
                else verify.tree_rrs(replacement=False, max_children=w))
    return _draft_model_generator(f"rsd_s(W={w},D={d})", ctx,
                                  lambda m: StochasticBeam(m, w, d, thr), verifier)


def pearl(ctx: BuildContext) -> Generator:
    """PEARL: pearl_gamma ("auto" = measured target/draft forward-time ratio, else an int;
    default: k)."""
    from specjax import pearl as pearl_lib

    dcfg, dparams = ctx.draft()
    spec = str(ctx.args.get("pearl_gamma", ctx.args.get("k", "auto")))
    gamma = (pearl_lib.measure_gamma(ctx.target_cfg, ctx.target_params, dcfg, dparams)
             if spec == "auto" else int(spec))
    verifier = chain_verifier(ctx.sampling)

    def fn(ids):
        g = pearl_lib.pearl_generate(
            ctx.target_params, ctx.target_cfg, [ids], draft=dcfg, draft_params=dparams,
            gamma=gamma, verifier=verifier, max_new_tokens=ctx.max_new_tokens,
            sampling=ctx.sampling, key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]),
                         steps=int(g.steps[0]), accept_hist=g.accept_hist[0].tolist())

    return Generator(f"pearl(gamma={gamma})", fn)


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def pld(ctx: BuildContext) -> Generator:
    """Prompt lookup: overrides pld_drafts (10), pld_max_ngram (3), pld_min_ngram (1),
    pld_earliest (false), pld_periodic (true); earliest=1/periodic=0 is Spec-Bench's PLD."""
    from specjax.drafters.prompt_lookup import PromptLookup

    a = ctx.args
    d = PromptLookup(ctx.target_cfg.vocab_size, num_drafts=int(a.get("pld_drafts", 10)),
                     max_ngram=int(a.get("pld_max_ngram", 3)),
                     min_ngram=int(a.get("pld_min_ngram", 1)),
                     earliest=_flag(a.get("pld_earliest", False)),
                     periodic=_flag(a.get("pld_periodic", True)))
    return _spec_generator(f"pld(k={d.num_drafts})", ctx, d, chain_verifier(ctx.sampling))


def token_recycling(ctx: BuildContext) -> Generator:
    """Token Recycling: overrides tr_k (8), tr_template ("tr80" or branching "4.2.1")."""
    from specjax.drafters.token_recycling import TokenRecycling, deterministic_tree

    spec = str(ctx.args.get("tr_template", "tr80"))
    template = spec if not spec[:1].isdigit() else tuple(int(b) for b in spec.split("."))
    d = TokenRecycling(ctx.target_cfg.vocab_size, k=int(ctx.args.get("tr_k", 8)),
                       template=template)
    verifier = verify.greedy if ctx.sampling.greedy else deterministic_tree(d.max_children)
    return _spec_generator(f"token_recycling({spec})", ctx, d, verifier)


def aded(ctx: BuildContext) -> Generator:
    """ADED: overrides aded_k (8), aded_slots (65536), aded_template ("tr80" or branching
    "4.2.1"), aded_c (PUCT exploration constant, 0.5)."""
    from specjax.drafters.aded import Aded
    from specjax.drafters.token_recycling import deterministic_tree

    a = ctx.args
    spec = str(a.get("aded_template", "tr80"))
    template = spec if not spec[:1].isdigit() else tuple(int(b) for b in spec.split("."))
    d = Aded(ctx.target_cfg.vocab_size, k=int(a.get("aded_k", 8)),
             slots=int(a.get("aded_slots", 1 << 16)), template=template,
             c_puct=float(a.get("aded_c", 0.5)))
    verifier = verify.greedy if ctx.sampling.greedy else deterministic_tree(d.max_children)
    return _spec_generator(f"aded({spec},c={d.c_puct:g})", ctx, d, verifier)


def kangaroo(ctx: BuildContext) -> Generator:
    """Kangaroo early exit (adapter-free until the training issue): overrides kangaroo_layer
    (default self_layers), kangaroo_k (6), kangaroo_threshold (0.6)."""
    from specjax.drafters.self_spec import Kangaroo

    a = ctx.args
    d = Kangaroo(ctx.target_cfg, exit_layer=int(a.get("kangaroo_layer", a["self_layers"])),
                 num_drafts=int(a.get("kangaroo_k", 6)),
                 threshold=float(a.get("kangaroo_threshold", 0.6)))
    return _spec_generator(f"kangaroo(l={d.exit_layer})", ctx, d, chain_verifier(ctx.sampling),
                           draft_params=ctx.target_params)


def swift(ctx: BuildContext) -> Generator:
    """SWIFT on-the-fly layer skipping: overrides swift_ratio (0.45), swift_k (6),
    swift_threshold (0.8), swift_window (16), swift_opt_steps (32; 0 = fixed spaced set),
    swift_granularity (sublayer | layer), swift_bo_every (2; 0 = random search only)."""
    from specjax.drafters.self_spec import Swift

    a = ctx.args
    d = Swift(ctx.target_cfg, num_drafts=int(a.get("swift_k", 6)),
              threshold=float(a.get("swift_threshold", 0.8)),
              skip_ratio=float(a.get("swift_ratio", 0.45)), window=int(a.get("swift_window", 16)),
              opt_steps=int(a.get("swift_opt_steps", 32)),
              granularity=a.get("swift_granularity", "sublayer"),
              bo_every=int(a.get("swift_bo_every", 2)), seed=ctx.seed)
    return _spec_generator(f"swift(r={d.skip_ratio},{d.granularity})", ctx, d,
                           chain_verifier(ctx.sampling), draft_params=ctx.target_params)


def bigram(ctx: BuildContext) -> Generator:
    """Bigram drafter (CS Drafting's statistical bottom model): overrides bigram_drafts (4),
    bigram_k (4)."""
    from specjax.drafters.bigram import Bigram

    d = Bigram(ctx.target_cfg.vocab_size, num_drafts=int(ctx.args.get("bigram_drafts", 4)),
               k=int(ctx.args.get("bigram_k", 4)))
    return _spec_generator(f"bigram(k={d.num_drafts})", ctx, d, chain_verifier(ctx.sampling))


def _max_gram_of(ctx: BuildContext, **kw):
    from specjax.drafters.max_gram import MaxGram

    a = ctx.args
    return MaxGram(ctx.target_cfg.vocab_size, max_n=int(a.get("mag_max_n", 16)),
                   k=int(a.get("bigram_k", 4)), earliest=_flag(a.get("mag_earliest", True)),
                   **kw)


def max_gram(ctx: BuildContext) -> Generator:
    """Max-Gram (CS Drafting's MaG): copies what followed the longest earlier match of the
    text's suffix, bigram fallback; overrides mag_drafts (10), mag_max_n (16), mag_earliest
    (1; 0 = most recent occurrence), bigram_k (4)."""
    d = _max_gram_of(ctx, num_drafts=int(ctx.args.get("mag_drafts", 10)))
    return _spec_generator(f"max_gram(k={d.num_drafts})", ctx, d, chain_verifier(ctx.sampling))


def cs_drafting(ctx: BuildContext) -> Generator:
    """CS Drafting: the draft model drafts the first cs_model (3) positions, accelerated by
    the statistical bottom drafter (vertical cascade, cs_lookahead (2) proposals per draft
    forward; cs_vertical=0 drafts autoregressively), the bottom drafter alone the next
    cs_bigram (2). cs_bottom: maxgram (the paper's MaG, default; mag_* as for max_gram) |
    bigram; bigram_k (4)."""
    from specjax.drafters import cascade
    from specjax.drafters.bigram import Bigram

    a = ctx.args
    dcfg, dparams = ctx.draft()
    model, small = int(a.get("cs_model", 3)), int(a.get("cs_bigram", 2))
    kind = str(a.get("cs_bottom", "maxgram"))
    if kind not in ("maxgram", "bigram"):
        raise ValueError(f"cs_bottom must be maxgram or bigram, got {kind!r}")
    k = int(a.get("bigram_k", 4))
    bottom = _max_gram_of(ctx) if kind == "maxgram" else Bigram(ctx.target_cfg.vocab_size, k=k)
    d = cascade.cs_drafting(DecoderLM(dcfg), model_positions=model, bigram_positions=small,
                            lookahead=int(a.get("cs_lookahead", 2)), k=k,
                            vertical=_flag(a.get("cs_vertical", True)), bottom=bottom)
    return _spec_generator(f"cs_drafting({model}+{small},{kind})", ctx, d,
                           chain_verifier(ctx.sampling), (dparams, None))


def _retrieval_of(ctx: BuildContext):
    from specjax.drafters.retrieval import Retrieval

    a = ctx.args
    return Retrieval(ctx.target_cfg.vocab_size, num_nodes=int(a.get("ret_nodes", 32)),
                     depth=int(a.get("ret_depth", 8)),
                     num_continuations=int(a.get("ret_continuations", 32)),
                     max_ngram=int(a.get("ret_max_ngram", 8)),
                     min_ngram=int(a.get("ret_min_ngram", 2)))


def _datastore(ctx: BuildContext):
    from specjax.drafters.retrieval import load_datastore

    if not ctx.args.get("datastore"):
        raise ValueError("this method needs datastore=PATH (build one with `python -m "
                         "specjax.drafters.retrieval build --tokenizer=... --corpus=... --out=PATH`)")
    return load_datastore(ctx.args["datastore"], vocab_size=ctx.target_cfg.vocab_size)


def retrieval(ctx: BuildContext) -> Generator:
    """REST retrieval drafts: datastore=PATH; overrides ret_nodes (32), ret_depth (8),
    ret_continuations (32), ret_max_ngram (8), ret_min_ngram (2)."""
    from specjax.drafters.token_recycling import deterministic_tree

    d = _retrieval_of(ctx)
    verifier = verify.greedy if ctx.sampling.greedy else deterministic_tree(d.max_children)
    return _spec_generator(f"retrieval(N={d.num_nodes})", ctx, d, verifier, _datastore(ctx))


def rasd(ctx: BuildContext) -> Generator:
    """RASD: draft-model top-k tree (rasd_tree "2.1") + pruned retrieval tree, fused
    (rasd_nodes 48, rasd_prune_topk 8); datastore=PATH and the ret_* overrides."""
    from specjax.drafters.rasd import RASD, rasd_params
    from specjax.drafters.token_recycling import deterministic_tree

    dcfg, dparams = ctx.draft()
    branching = [int(b) for b in str(ctx.args.get("rasd_tree", "2.1")).split(".")]
    parents = tuple(trees.template_topology(branching).tolist())
    d = RASD(DraftModel(DecoderLM(dcfg), parents, "topk"), _retrieval_of(ctx),
             num_nodes=int(ctx.args.get("rasd_nodes", 48)),
             prune_topk=int(ctx.args.get("rasd_prune_topk", 8)))
    verifier = verify.greedy if ctx.sampling.greedy else deterministic_tree(d.max_children)
    return _spec_generator(f"rasd(N={d.num_nodes})", ctx, d, verifier,
                           rasd_params(dparams, _datastore(ctx)))


REGISTRY: dict[str, MethodInfo] = {
    m.name: m
    for m in [
        MethodInfo("autoregressive", "-", "yes", "nothing", autoregressive),
        MethodInfo("sd_chain", "Leviathan et al. arXiv:2211.17192; Chen et al. arXiv:2302.01318",
                   "yes", "a draft model (or self_layers)", sd_chain),
        MethodInfo("sd_tree", "SpecInfer arXiv:2305.09781; RSD arXiv:2402.14160", "yes",
                   "a draft model (or self_layers)", sd_tree),
        MethodInfo("sequoia", "Sequoia, Chen et al. arXiv:2402.12374", "yes",
                   "a draft model (or self_layers) + a template (sequoia_tree=PATH[@N])",
                   sequoia_tree),
        MethodInfo("dyspec", "DySpec, Xiong et al. arXiv:2410.11744", "yes",
                   "a draft model (or self_layers)", dyspec),
        MethodInfo("rsd_s", "RSD-S, Jeon et al. arXiv:2402.14160 (stochastic beam search, Kool "
                   "et al. arXiv:1903.06059)", "yes", "a draft model (or self_layers)", rsd_s),
        MethodInfo("pearl", "PEARL, Liu et al. arXiv:2408.11850 (parallel draft/verify, "
                   "adaptive length)", "yes", "a draft model (or self_layers)", pearl),
        MethodInfo("sd_schedule", "HF assisted generation's heuristic K schedule", "yes",
                   "a draft model (or self_layers)", sd_schedule),
        MethodInfo("sd_confidence", "Kangaroo early stop, Liu et al. arXiv:2404.18911", "yes",
                   "a draft model (or self_layers)", sd_confidence),
        MethodInfo("specdecpp", "SpecDec++, Huang et al. arXiv:2405.19715 (draft-prob "
                   "acceptance estimate)", "yes", "a draft model (or self_layers)", specdecpp),
        MethodInfo("smartspec", "SmartSpec, Liu et al. arXiv:2406.14066", "yes",
                   "a draft model (or self_layers); measures step costs", smartspec),
        MethodInfo("pld", "Saxena 2023 (prompt lookup); Spec-Bench arXiv:2401.07851", "yes",
                   "nothing", pld),
        MethodInfo("token_recycling", "Luo et al. arXiv:2408.08696", "yes", "nothing",
                   token_recycling),
        MethodInfo("aded", "ADED, Liu et al. arXiv:2407.12021", "yes", "nothing", aded),
        MethodInfo("bigram", "CS Drafting arXiv:2312.11462 (statistical bottom drafter)", "yes",
                   "nothing", bigram),
        MethodInfo("max_gram", "CS Drafting arXiv:2312.11462 (Max-Gram statistical drafter)",
                   "yes", "nothing", max_gram),
        MethodInfo("cs_drafting", "CS Drafting, Chen et al. arXiv:2312.11462", "yes",
                   "a draft model (or self_layers)", cs_drafting),
        MethodInfo("kangaroo", "Kangaroo, Liu et al. arXiv:2404.18911 (adapter-free early exit)",
                   "yes", "nothing (the target's first layers)", kangaroo),
        MethodInfo("swift", "SWIFT, Xia et al. arXiv:2410.06916; Draft & Verify arXiv:2309.08168",
                   "yes", "nothing (the target with layers skipped)", swift),
        MethodInfo("retrieval", "REST, He et al. arXiv:2311.08252", "yes",
                   "a datastore (datastore=PATH)", retrieval),
        MethodInfo("rasd", "RASD, Quan et al. arXiv:2503.03434", "yes",
                   "a draft model (or self_layers) + a datastore", rasd),
    ]
}


def parse(spec: str) -> tuple[MethodInfo, dict]:
    """`"sd_chain/k=6/self_layers=12"` -> (the registered method, its overrides of config.draft)."""
    # split at "/key=" only, so values may be paths ("retrieval/datastore=ds/x.npz")
    name, *over = re.split(r"/(?=[A-Za-z_][A-Za-z0-9_]*=)", spec.strip())
    if "/" in name:
        name, bad = name.split("/", 1)
        over.insert(0, bad)
    args = {}
    for kv in over:
        if "=" not in kv:
            raise ValueError(f"method override {kv!r} in {spec!r} is not key=value")
        k, v = kv.split("=", 1)
        args[k] = v
    return get(name), args


def get(name: str) -> MethodInfo:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def table() -> str:
    lines = ["| method | paper | lossless | needs |", "|---|---|---|---|"]
    for m in REGISTRY.values():
        lines.append(f"| {m.name} | {m.paper} | {m.lossless} | {m.needs} |")
    return "\n".join(lines)

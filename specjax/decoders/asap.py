"""Grammar-aligned decoding: ASAp sampling, and plain grammar-constrained decoding.

Park et al., "Grammar-Aligned Decoding" (NeurIPS 2024, arXiv:2405.21047).

Grammar-constrained decoding (GCD) masks, at every step, the tokens after which no
string of the grammar G can be completed, and samples from the renormalised rest.
That guarantees a grammatical output but not its law: GCD samples x with probability
prod_i P(x_i | x_<i) / (GCD-allowed mass at x_<i), which over-weights prefixes whose
continuations are mostly ungrammatical under the model. The law wanted (grammar-aligned
decoding, GAD) is the model conditioned on the grammar,

    Q(x) = P(x) 1[x in G] / P(G),

which factorises through the expected future grammaticality (EFG) of a prefix u,

    c(u) = sum_x P(x | u) 1[u x in G],        Q(t | u) = P(t | u) c(u t) / c(u).

c is intractable (a sum over all futures), so GCD in effect replaces it by
c_GCD(u) = 1[u can still be completed in G] >= c(u).

ASAp (Adaptive Sampling with Approximate expected futures) keeps
the prefixes of all samples drawn so far in a trie and, for them, an estimate
c~(u) >= c(u) that every sample tightens:

- a prefix not in the trie has c~(u) = c_GCD(u) (1 if GCD allows it, 0 otherwise);
- a terminal prefix (ending in EOS, necessarily grammatical) has c~(u) = 1;
- a prefix u in the trie has c~(u) = sum_t P(t | u) c~(u t) over the GCD-allowed t,
  where P(. | u) was observed when u was visited. We store per node its GCD-allowed
  mass m(u) = sum_{t allowed} P(t | u) and, per visited child t, P(t | u), and compute

      c~(u) = m(u) - sum_{t visited} P(t | u) (1 - c~(u t))

  (the same sum: unvisited allowed children count 1, visited ones their estimate).
- next token: t ~ P(t | u) c~(u t) over the allowed t, i.e. GCD's law reweighted by
  the children's estimates (with an empty trie ASAp IS GCD);
- update after a sample x_1..x_n (x_n an EOS token): insert its prefixes (recording
  m and P(x_i | x_<i)), then recompute c~ by the formula above bottom-up, from the
  parent of the terminal node to the root. A row whose whole reweighted law is 0
  (every allowed token has P = 0 or an estimate 0: a dead end, e.g. underflow) is
  not a sample; its prefix gets c~ = 0, updated the same way, and ASAp draws again.

Every c~ is an upper bound of c (induction from the leaves: c~ of an unvisited prefix
is c_GCD >= c, and the recursion is the one c satisfies), estimates only decrease,
and once the trie holds every prefix of the (finite, budgeted) language every c~ is
exact and the proposal is Q itself; the paper proves the proposal converges to Q.

Length budget. A sample has at most `max_new_tokens` = M tokens, its EOS included, so
the language actually sampled is L(G) restricted to strings of <= M - 1 tokens plus
EOS. "GCD-allowed" accounts for it: after d tokens, a non-EOS token t is allowed iff
from the automaton state after t an accepting state is reachable within the M - d - 2
tokens that still leave room for EOS; EOS is allowed iff the state accepts. Every GCD
and ASAp sample therefore ends with EOS within M tokens, and Q, c and c_GCD are all
relative to this budgeted language.

Token automaton. The grammar is given as a deterministic automaton over token ids
(`TokenAutomaton`): `next` int32[S, V] (next state; -1, or any state from which no
accepting state is reachable, = token not allowed), `accept` bool[S], `start`
(default 0).
EOS columns of `next` are ignored: an EOS token is allowed iff the state accepts, and
ends the row. These are the params {"next", "accept"} of `decoders.grammar`'s
`GrammarRule` (`TokenAutomaton.from_params`). GCD itself is the `LogitsRule`
`AutomatonRule` (state: automaton state and tokens emitted), so plain GCD sampling
(`gcd_sample`) is the autoregressive loop on `rules.RuleLM(model, AutomatonRule)`.

Why the ASAp loop is host-driven (not one `lax.while_loop`): the trie grows by up to
one node per token of every sample and is read along arbitrary paths, and sample k + 1
depends on the estimates updated by sample k. A device loop would need a worst-case
node table with on-device prefix hashing and a sequential scan over samples; the
expensive part, the model, is jitted instead: one jitted prefill per batch and ONE
jitted step function per token (`_asap_step`: GCD mask + reweighting + sampling +
the `LanguageModel` decode step on the KV cache), with the host supplying each row's
children estimates (a dense log c~ correction, 0 off the trie) and reading back the
token, its probability and the allowed mass. The trie (dicts, floats) stays on the host.

Batches. `batch_size` B > 1 draws B samples per batch in parallel, each from the
proposal defined by the trie at the start of the batch (independent given it); the
trie absorbs all B samples after the batch. B = 1 is exactly the paper's sequential
algorithm; B > 1 updates the estimates B samples late, with the same guarantees
(upper bounds, convergence), trading adaptivity for model throughput.

Letters: B rows, V vocab, S automaton states, M max new tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.autoregressive import autoregressive_generate
from specjax.decode.host import prepare_prompts
from specjax.decoders import rules
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import Sampling


# -- the token automaton and its GCD rule ---------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TokenAutomaton:
    """A deterministic automaton over token ids (see the module docstring).

    Attributes:
      next: int[S, V] next state after each token; -1 = not allowed (EOS columns
        are ignored).
      accept: bool[S] accepting states (EOS allowed there).
      start: the start state.
    """

    next: np.ndarray
    accept: np.ndarray
    start: int = 0

    @classmethod
    def from_params(cls, params: dict, start: int = 0) -> "TokenAutomaton":
        """From a `GrammarRule`'s params {"next": int32[S, V], "accept": bool[S]}."""
        return cls(np.asarray(params["next"]), np.asarray(params["accept"]), start)


@dataclasses.dataclass(frozen=True)
class AutomatonRule:
    """GCD as a `rules.LogitsRule`: -inf on the tokens not allowed (module docstring).

    State: (automaton state int32[R], tokens emitted int32[R]). Params
    (`automaton_params`): "next" int32[S + 1, V] (state S is a sink, -1 mapped to it),
    "accept" bool[S + 1], "viable" bool[K + 1, S + 1] (viable[k, s]: an accepting state
    is reachable from s with k tokens left, EOS included; row K is the fixpoint, so k
    is clipped to K), "start" and "budget" (M) int32 scalars.
    """

    eos_ids: tuple[int, ...]

    def init(self, params, batch):
        return (jnp.full((batch,), params["start"], jnp.int32), jnp.zeros((batch,), jnp.int32))

    def allowed(self, params, state) -> jax.Array:
        """bool[R, V]: the GCD-allowed tokens in each row's state."""
        s, d = state
        viable = params["viable"]
        left = jnp.clip(params["budget"] - d - 1, 0, viable.shape[0] - 1)  # after this token
        nxt = params["next"][s]  # [R, V]
        ok = jnp.take_along_axis(viable[left], nxt, axis=1)  # [R, V]
        eos_ok = params["accept"][s] & (d < params["budget"])  # [R]
        return jnp.where(_is_eos(self.eos_ids, nxt.shape[1])[None], eos_ok[:, None], ok)

    def apply(self, params, state, logits):
        return jnp.where(self.allowed(params, state), logits, -jnp.inf)

    def step(self, params, state, token, logits):
        s, d = state
        sink = params["next"].shape[0] - 1
        nxt = params["next"][s, token]
        eos = _is_eos(self.eos_ids, params["next"].shape[1])[token]
        return jnp.where(eos, sink, nxt).astype(jnp.int32), d + 1


def _is_eos(eos_ids, V) -> jax.Array:
    return jnp.zeros((V,), bool).at[jnp.asarray(eos_ids, jnp.int32)].set(True)


def automaton_params(automaton: TokenAutomaton, eos_ids: Sequence[int], vocab_size: int,
                     max_new_tokens: int) -> dict:
    """The `AutomatonRule` params of an automaton under a budget of M tokens.

    Raises:
      ValueError: malformed tables, no EOS id, or an empty (budgeted) language.
    """
    nxt = np.asarray(automaton.next)
    accept = np.asarray(automaton.accept, bool)
    eos = sorted({int(e) for e in eos_ids})
    if not eos:
        raise ValueError("eos_ids is empty: a grammar-aligned sample ends with an EOS token")
    if min(eos) < 0 or max(eos) >= vocab_size:
        raise ValueError(f"eos_ids {eos} must lie in [0, {vocab_size})")
    if nxt.ndim != 2 or nxt.shape[1] != vocab_size:
        raise ValueError(f"automaton.next must be int[S, V={vocab_size}], got shape {nxt.shape}")
    S = nxt.shape[0]
    if accept.shape != (S,):
        raise ValueError(f"automaton.accept must be bool[S={S}], got shape {accept.shape}")
    if nxt.min() < -1 or nxt.max() >= S:
        raise ValueError(f"automaton.next entries must be -1 or states in [0, {S})")
    if not 0 <= automaton.start < S:
        raise ValueError(f"automaton.start={automaton.start} is not a state in [0, {S})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # a sink state S (not accepting) for -1 and for EOS
    table = np.where(nxt < 0, S, nxt).astype(np.int32)
    table = np.concatenate([table, np.full((1, vocab_size), S, np.int32)])  # [S + 1, V]
    acc = np.append(accept, False)
    body = np.ones(vocab_size, bool)
    body[eos] = False
    moves = table[:, body]  # [S + 1, V - |eos|]
    # viable[k, s]: with k tokens left (EOS included) an accepting state is reachable
    viable = [np.zeros(S + 1, bool)]
    for _ in range(max_new_tokens):
        row = acc | viable[-1][moves].any(axis=1)
        if np.array_equal(row, viable[-1]) and len(viable) > 1:
            break  # a fixpoint: every larger budget has the same row
        viable.append(row)
    viable = np.stack(viable)  # [K + 1, S + 1]
    if not viable[min(max_new_tokens, len(viable) - 1), automaton.start]:
        raise ValueError(
            "the automaton's language is empty within max_new_tokens="
            f"{max_new_tokens} (no accepting state is reachable from the start state "
            "with room for EOS)")
    return {"next": jnp.asarray(table), "accept": jnp.asarray(acc),
            "viable": jnp.asarray(viable), "start": jnp.asarray(automaton.start, jnp.int32),
            "budget": jnp.asarray(max_new_tokens, jnp.int32)}


def _constrained(model, automaton, eos_ids, max_new_tokens):
    """(the `RuleLM` decoding under GCD, its rule params)."""
    model = as_lm(model)
    rp = automaton_params(automaton, eos_ids, model.vocab_size, max_new_tokens)
    return rules.RuleLM(model, AutomatonRule(tuple(sorted({int(e) for e in eos_ids})))), rp


def _check_common(prompt, num_samples, batch_size=1):
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(prompt) == 0:
        raise ValueError("the prompt is empty; it needs at least one token")


def gcd_sample(params, model: ModelConfig | LanguageModel, prompt: Sequence[int],
               automaton: TokenAutomaton, *, num_samples: int, max_new_tokens: int,
               key: jax.Array, eos_ids: Sequence[int]) -> list[list[int]]:
    """`num_samples` independent grammar-constrained samples (GCD; the baseline ASAp
    corrects): the autoregressive loop (one jitted `lax.while_loop`, all samples as
    rows of one batch) on `rules.RuleLM(model, AutomatonRule)` at temperature 1.

    Returns:
      the token lists (each ends with an EOS token).
    """
    _check_common(prompt, num_samples)
    lm, rp = _constrained(model, automaton, eos_ids, max_new_tokens)
    out = autoregressive_generate(
        rules.rule_params(params, rp), lm, [list(prompt)] * num_samples,
        max_new_tokens=max_new_tokens, sampling=Sampling(temperature=1.0), key=key,
        eos_ids=eos_ids)
    return out.tokens


# -- the EFG trie ---------------------------------------------------------------------


class _Node:
    """A visited prefix u: mass = m(u) (None until observed; a terminal node has
    none), children {t: (P(t | u), node)}, value = c~(u), dead = a dead end."""

    __slots__ = ("mass", "children", "value", "dead")

    def __init__(self):
        self.mass: float | None = None
        self.children: dict[int, tuple[float, _Node]] = {}
        self.value = 1.0
        self.dead = False

    def recompute(self):
        if self.dead:
            self.value = 0.0
        elif self.mass is not None:
            lost = sum(p * (1.0 - child.value) for p, child in self.children.values())
            self.value = min(max(self.mass - lost, 0.0), 1.0)


@dataclasses.dataclass(eq=False)
class EfgTrie:
    """The ASAp state: the visited prefixes (generated tokens only) of one prompt,
    automaton and budget, with their EFG upper bounds c~ (module docstring).

    Pass it back to `asap_sample(..., trie=...)` to keep sampling from where a call
    stopped (same prompt, eos_ids and max_new_tokens).
    """

    context: tuple  # (prompt, eos_ids, max_new_tokens) the estimates are relative to
    root: _Node = dataclasses.field(default_factory=_Node)
    num_samples: int = 0  # samples absorbed
    dead_ends: int = 0  # dead-end rows absorbed
    num_nodes: int = 1

    def estimate(self, prefix: Sequence[int]) -> float | None:
        """c~(prefix) if the prefix was visited, else None (its estimate is c_GCD)."""
        node = self.root
        for t in prefix:
            if int(t) not in node.children:
                return None
            node = node.children[int(t)][1]
        return node.value

    def prefixes(self) -> Iterator[tuple[tuple[int, ...], float]]:
        """(prefix, c~(prefix)) of every visited prefix, the root () first."""
        stack = [((), self.root)]
        while stack:
            prefix, node = stack.pop()
            yield prefix, node.value
            stack.extend((prefix + (t,), child) for t, (_, child) in node.children.items())

    @property
    def root_estimate(self) -> float:
        """c~(()) >= P(G): an upper bound of the grammar's probability under the model."""
        return self.root.value

    def absorb(self, tokens: Sequence[int], probs: Sequence[float],
               masses: Sequence[float], complete: bool):
        """Adds one row: tokens x_1..x_n drawn with P(x_i | x_<i) = probs[i - 1] at
        prefixes of allowed mass masses[0..]; complete (x_n is EOS) or a dead end at
        x_1..x_n (then len(masses) = n + 1). Then updates c~ bottom-up along it."""
        path = [self.root]
        for i, t in enumerate(tokens):
            node = path[-1]
            if node.mass is None:
                node.mass = float(masses[i])
            if t not in node.children:
                node.children[t] = (float(probs[i]), _Node())
                self.num_nodes += 1
            path.append(node.children[t][1])
        last = path[-1]
        if complete:
            self.num_samples += 1
        else:
            last.mass = float(masses[len(tokens)])
            last.dead = True
            self.dead_ends += 1
        for node in reversed(path):
            node.recompute()

    def corrections(self, node: _Node | None, V: int) -> np.ndarray:
        """float32[V] log c~(u t) of the visited children of node u, 0 elsewhere."""
        out = np.zeros(V, np.float32)
        if node is not None:
            for t, (_, child) in node.children.items():
                out[t] = np.log(child.value) if child.value > 0 else -np.inf
        return out


# -- the jitted model side ------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _asap_prefill(params, tokens, lengths, *, model, max_len):
    return model.prefill(params, tokens, lengths, model.init_cache(tokens.shape[0], max_len))


@functools.partial(jax.jit, static_argnames=("model",))
def _asap_step(params, key, cache, log_efg, active, *, model):
    """One ASAp token for every row, then the model forward on it.

    cache: the `RuleLM` cache at each row's prefix u (cache.pending: the raw logits
    there; cache.state: the automaton state); log_efg: float32[B, V] log c~(u t) of
    the visited children, 0 elsewhere; active: bool[B].

    Returns:
      (key, token int32[B], P(token | u) float32[B], allowed mass m(u) float32[B],
       dead bool[B] (the reweighted law is 0 everywhere), cache after the token).
    """
    logp = jax.nn.log_softmax(cache.pending, axis=-1)  # [B, V] log P(. | u)
    masked = jnp.where(model.rule.allowed(params["rule"], cache.state), logp, -jnp.inf)
    mass = jnp.exp(jax.nn.logsumexp(masked, axis=-1))  # [B]
    weights = masked + log_efg  # [B, V] log P(t | u) c~(u t)
    dead = ~jnp.isfinite(jnp.max(weights, axis=-1))
    key, sub = jax.random.split(key)
    token = jax.random.categorical(sub, weights, axis=-1).astype(jnp.int32)
    token = jnp.where(dead, 0, token)
    prob = jnp.exp(jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0])
    _, cache = model.decode_step(params, token, cache, active & ~dead)
    return key, token, prob, mass, dead, cache


# -- ASAp -----------------------------------------------------------------------------


@dataclasses.dataclass
class AsapOutput:
    """samples: the complete samples in the order drawn (each ends with EOS); trie: the
    EFG trie after them (its statistics: num_nodes, num_samples, dead_ends,
    root_estimate); target_calls: model forwards of this call (prefills included)."""

    samples: list[list[int]]
    trie: EfgTrie
    target_calls: int


def asap_sample(params, model: ModelConfig | LanguageModel, prompt: Sequence[int],
                automaton: TokenAutomaton, *, num_samples: int, max_new_tokens: int,
                key: jax.Array, eos_ids: Sequence[int], batch_size: int = 1,
                trie: EfgTrie | None = None) -> AsapOutput:
    """Grammar-aligned sampling with ASAp (Park et al., arXiv:2405.21047; module docstring).

    Args:
      params: the model parameters.
      model: its `ModelConfig` or any `LanguageModel`.
      prompt: the token ids the samples continue (>= 1).
      automaton: the grammar as a `TokenAutomaton`.
      num_samples: complete samples to return (>= 1).
      max_new_tokens: M, tokens per sample at most, its EOS included.
      key: PRNG key.
      eos_ids: the tokens that end a sample (allowed iff the automaton accepts).
      batch_size: rows drawn in parallel per batch (see "Batches" above).
      trie: an `EfgTrie` from an earlier call to continue from (default: empty).

    Returns:
      `AsapOutput`: the samples, the updated trie, the model forwards.

    Raises:
      ValueError: num_samples or batch_size < 1, an empty prompt, a malformed
        automaton or an empty language; a trie of another prompt or budget; a model
        that gives the whole language probability 0 (every row a dead end).
    """
    _check_common(prompt, num_samples, batch_size)
    lm, rp = _constrained(model, automaton, eos_ids, max_new_tokens)
    eos = {int(e) for e in eos_ids}
    context = (tuple(int(t) for t in prompt), tuple(sorted(eos)), max_new_tokens)
    if trie is None:
        trie = EfgTrie(context)
    elif trie.context != context:
        raise ValueError(f"the trie was built for (prompt, eos_ids, max_new_tokens) = "
                         f"{trie.context}, not {context}")
    full = rules.rule_params(params, rp)
    V = lm.vocab_size
    B, M = batch_size, max_new_tokens
    tokens, lengths, max_len = prepare_prompts(lm, [list(prompt)] * B, M, None)
    samples: list[list[int]] = []
    calls = 0
    while len(samples) < num_samples:
        if trie.root.value <= 0.0:
            raise ValueError("the model gives the grammar probability 0 within max_new_tokens "
                             "(every continuation is a dead end)")
        rows = min(B, num_samples - len(samples))
        active = np.arange(B) < rows
        _, cache = _asap_prefill(full, tokens, lengths, model=lm, max_len=max_len)
        calls += rows
        nodes: list[_Node | None] = [trie.root] * B  # each row's prefix in the frozen trie
        seq = [[] for _ in range(B)]
        probs = [[] for _ in range(B)]
        masses = [[] for _ in range(B)]
        finished = []  # (row, complete)
        for _ in range(M):
            log_efg = np.stack([trie.corrections(nodes[b] if active[b] else None, V)
                                for b in range(B)])
            key, tok, prob, mass, dead, cache = _asap_step(
                full, key, cache, jnp.asarray(log_efg), jnp.asarray(active), model=lm)
            tok, prob, mass, dead = jax.device_get((tok, prob, mass, dead))
            for b in np.flatnonzero(active):
                masses[b].append(float(mass[b]))
                if dead[b]:
                    finished.append((b, False))
                    active[b] = False
                    continue
                calls += 1
                t = int(tok[b])
                seq[b].append(t)
                probs[b].append(float(prob[b]))
                child = nodes[b].children.get(t) if nodes[b] is not None else None
                nodes[b] = None if child is None else child[1]
                if t in eos:
                    finished.append((b, True))
                    active[b] = False
            if not active.any():
                break
        if active.any():  # unreachable: the budgeted mask forces EOS by token M
            raise RuntimeError("a row reached max_new_tokens without EOS")
        for b, complete in sorted(finished):  # row order: reproducible
            trie.absorb(seq[b], probs[b], masses[b], complete)
            if complete:
                samples.append(seq[b])
    return AsapOutput(samples=samples, trie=trie, target_calls=calls)

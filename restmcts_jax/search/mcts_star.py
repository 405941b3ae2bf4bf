"""MCTS* (SPEC "MCTS*"): one batched, jit-compiled search over B step trees.

Each iteration, for every question whose search is still running:
  1. select   — descend by `v_c + c sqrt(2 ln n_p / n_c)` (unvisited: `v_c + inf`)
                to a leaf (with `max_expansions`, possibly an inner node whose
                children are all exhausted or, with `widen_visits`, one
                visited often enough to widen); with `stop_at_end_gate`, a leaf
                with v >= end_gate ends the search and is the answer;
  2. expand   — unless the leaf is final or at max depth: b steps from the
                policy, steps equal to each other or to an existing child
                merged, each new child scored by V;
  3. rollout  — from the best new child C' (none if every step merged): up to
                m greedy steps, each the best of d policy samples by V;
                `v_C' <- (1-alpha) v_C' + alpha v_max`, `n_C' += 1`; rollout
                steps are not kept as nodes (with `rollout_answers`, the
                best rollout that finished is kept as a candidate answer);
  4. backup   — leaf to root: `n += 1`, `v = sum n_c v_c / sum n_c`.
Selection and backup are written for one tree and `vmap`ped; all leaves of all
questions are expanded by ONE batched policy call and ONE batched value call,
and each rollout step likewise. Rows that have finished are masked.

The policy and the value model enter as functions, so the same search runs an
LM (`search_lm`) or a deterministic toy in tests:
  policy_fn(prefix [R, L], lengths [R], keys [R * k], k) -> Proposals [R * k]
  value_fn(prefix [R, L], lengths [R], steps [R * k, S], step_lengths [R * k],
           k) -> values [R * k] of every prefix + step
`concat_value_fn` turns a scorer of whole sequences into a `value_fn`; an LM
value model scores continuations with its prefix encoded once
(`ValueModel.score_continuations`).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from restmcts_jax import sampling
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.search import node_cache
from restmcts_jax.search import tree as tree_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
  """Search settings (SPEC reference defaults for evaluation).

  Attributes:
    num_iterations: iteration budget.
    token_budget: policy-token budget per question (0: none). A question
      starts another iteration while its tokens plus half its mean
      iteration's tokens are under the budget, so that it spends the budget
      on average (starting while merely under it would overshoot by half an
      iteration on average: ~70 tokens per iteration with b = m = 3).
    stochastic_budget: instead, a question under its token budget starts
      another iteration with probability (budget - tokens) / its mean
      iteration's tokens (surely when a whole iteration fits), so that it
      spends the budget in expectation at any budget. The rule above rounds
      to whole iterations: at a budget of 1.3 iterations every question
      stops after one (on Game of 24, 71 policy tokens where two CoT
      samples spend 93).
    branch: b, children sampled per expansion.
    roll_branch: d, samples per rollout step.
    roll_forward_steps: m, greedy rollout steps. With m = 0, v_max keeps
      its start, 0 (the reference's value floor), so C' takes its visit at
      (1 - alpha) of its value: selection by value then tries its siblings
      before going below it. On Game of 24 the training search (selection
      by value, no rollouts) solved 2.0 ± 0.9 points more of its puzzles
      that way than with C' kept at its value (six checkpoints;
      BENCHMARKS.md).
    exploration: c in the selection score.
    alpha: weight of the rollout's best value in the blend.
    unvisited_bonus: inf, added to an unvisited child's value.
    end_gate: a selected leaf with at least this value may end the search.
    stop_at_end_gate: end at the gate (evaluation) or search the whole budget
      (collecting trees for training).
    gate_requires_final: only a finished solution can pass the gate (SPEC:
      any node; an unfinished answer grades wrong at evaluation).
    prefer_final_answer: when no node passed the gate, answer with the best
      final node if there is one (SPEC: the best node, which may be an
      unfinished partial solution, so it scores 0 when values are flat).
    max_depth: deepest node (steps per solution); the reference has none.
    max_step_len: S, tokens per step.
    random_ties: children with equal selection scores are chosen between at
      random (SPEC), from the question's key; False: the first in slot order
      (what `sequential.SequentialSearch` does).
    skip_exhausted: selection passes over exhausted subtrees: leaves it can
      neither expand nor stop at (finished solutions, and unfinished nodes at
      max_depth, below the end gate) and nodes whose children are all
      exhausted and that have no expansion left; a question with an
      exhausted root stops. A deviation from SPEC (False), which selects
      such a leaf again, an iteration that adds nothing but its visit.
    max_expansions: times a node may be expanded (SPEC: once). Above 1, a
      node whose children are all exhausted is not exhausted itself while it
      has expansions left: selection stops there and samples b more steps
      (steps equal to an existing child merged), so a search whose tree runs
      out keeps spending its budget. An expansion whose steps all merge
      into existing children adds nothing but costs its iteration and
      tokens. Needs `skip_exhausted`.
    widen_visits: progressive widening (0: off; a deviation from SPEC): a
      node expanded e < max_expansions times is expanded again, whatever
      its children, once its visits reach `widen_visits * e**2` (a node
      rolled out from counts that visit too): selection stops there, and
      the end gate does not apply to it. Without it a node's first b
      samples are all selection can ever descend to: where all of the
      root's are lost moves, every later iteration expands lost positions
      (BENCHMARKS.md). The rollout that follows starts from the best of the
      new children, as after every expansion.
    widen_after_final: widening applies only to a node with a finished
      solution (a final node) in its subtree; until one is found below it,
      selection descends past it. With a weak first policy, widening from
      the start re-expanded shallow nodes before any path reached an
      answer (BENCHMARKS.md).
    rollout_answers: a rollout that ends in a finished solution is kept as a
      candidate answer (its final step valued by V), not only its value: the
      search answers with the best such rollout when no node passed the gate
      and it outranks the best node (a deviation from SPEC, where rollout
      steps only update values; their tokens count against the budget
      either way).
  """

  num_iterations: int = 50
  token_budget: int = 0
  stochastic_budget: bool = False
  branch: int = 3
  roll_branch: int = 1
  roll_forward_steps: int = 3
  exploration: float = 0.7
  alpha: float = 0.5
  unvisited_bonus: float = 1.0
  end_gate: float = 0.9
  stop_at_end_gate: bool = True
  gate_requires_final: bool = False
  prefer_final_answer: bool = False
  max_depth: int = 8
  max_step_len: int = 32
  random_ties: bool = True
  skip_exhausted: bool = False
  max_expansions: int = 1
  widen_visits: int = 0
  widen_after_final: bool = False
  rollout_answers: bool = False

  def __post_init__(self):
    if self.max_expansions < 1:
      raise ValueError(f"max_expansions={self.max_expansions}: must be >= 1")
    if self.max_expansions > 1 and not self.skip_exhausted:
      raise ValueError(
          f"max_expansions={self.max_expansions} expands again the nodes "
          "whose children are all exhausted: it needs skip_exhausted=True")
    if self.widen_visits < 0:
      raise ValueError(f"widen_visits={self.widen_visits}: must be >= 0")
    if self.widen_visits and self.max_expansions < 2:
      raise ValueError(
          f"widen_visits={self.widen_visits} expands nodes again: it needs "
          "max_expansions >= 2")
    if self.widen_after_final and not self.widen_visits:
      raise ValueError("widen_after_final gates widening: it needs "
                       "widen_visits >= 1")

  @property
  def num_slots(self) -> int:
    return 1 + self.num_iterations * self.branch

  @property
  def max_children(self) -> int:
    """K, child slots per node."""
    return self.branch * self.max_expansions


@struct.dataclass
class Proposals:
  """Steps proposed by the policy: `tokens [R, S]`, `lengths [R]`,
  `is_final [R]`."""

  tokens: Array
  lengths: Array
  is_final: Array


PolicyFn = Callable[[Array, Array, Array, int], Proposals]
ValueFn = Callable[[Array, Array, Array, Array, int], Array]


@struct.dataclass
class Rollout:
  """One rollout per tree: the steps it sampled after the node it started
  from (`MCTSConfig.rollout_answers` keeps the best that finished).

  Attributes:
    node: `[B]` the node it started from.
    steps: `[B, m, S]` its steps, right-padded.
    step_lengths: `[B, m]` (0 for the steps it did not take).
    value: `[B]` V's value of its final step if it finished, else -1.
  """

  node: Array
  steps: Array
  step_lengths: Array
  value: Array

  @classmethod
  def none(cls, batch: int, config: "MCTSConfig") -> "Rollout":
    m, s = config.roll_forward_steps, config.max_step_len
    return cls(node=jnp.zeros((batch,), jnp.int32),
               steps=jnp.zeros((batch, m, s), jnp.int32),
               step_lengths=jnp.zeros((batch, m), jnp.int32),
               value=jnp.full((batch,), -1.0, jnp.float32))

  @property
  def finished(self) -> Array:
    return self.value >= 0


@struct.dataclass
class SearchResult:
  """Finished search of B questions.

  Attributes:
    tree: the B trees.
    expansions: `[B, N]` times each node was expanded.
    answer_node: `[B]` the node chosen as the answer (where
      `answer_is_rollout`: the node the chosen rollout started from).
    answer_is_rollout: `[B]` the answer is `best_rollout`, not a node.
    best_rollout: the finished rollout of highest value in each search
      (`MCTSConfig.rollout_answers`; else none).
    passed_gate: `[B]` the answer passed end_gate during selection.
    iterations: `[B]` iterations run.
    policy_tokens: `[B]` tokens generated by the policy (rollouts included).
    value_tokens: `[B]` tokens scored by the value model.
  """

  tree: tree_lib.Tree
  expansions: Array
  answer_node: Array
  answer_is_rollout: Array
  best_rollout: Rollout
  passed_gate: Array
  iterations: Array
  policy_tokens: Array
  value_tokens: Array


# --- one tree ---------------------------------------------------------------


def _child_scores(t: tree_lib.Tree, node, config: MCTSConfig,
                  skip=None) -> Array:
  """`[K]` selection scores of `node`'s children (-inf where none, and where
  `skip [N]` is set)."""
  kids = t.children[node]
  idx = jnp.maximum(kids, 0)
  n_c = t.visits[idx].astype(jnp.float32)
  n_p = jnp.maximum(t.visits[node], 1).astype(jnp.float32)
  explore = config.exploration * jnp.sqrt(
      2.0 * jnp.log(n_p) / jnp.maximum(n_c, 1.0))
  bonus = jnp.where(n_c > 0, explore, config.unvisited_bonus)
  allowed = kids != tree_lib.NO_CHILD
  if skip is not None:
    allowed &= ~skip[idx]
  return jnp.where(allowed, t.value[idx] + bonus, -jnp.inf)


def _best_child(t: tree_lib.Tree, node, config: MCTSConfig, key,
                skip=None) -> Array:
  """The child to descend to: the highest selection score, ties broken by
  draws from `key` folded with `node` (see `MCTSConfig.random_ties`)."""
  scores = _child_scores(t, node, config, skip)
  if not config.random_ties:
    return t.children[node, jnp.argmax(scores)]
  draws = jax.random.uniform(jax.random.fold_in(key, node), scores.shape)
  top = scores == jnp.max(scores)
  return t.children[node, jnp.argmax(jnp.where(top, draws, -1.0))]


def exhausted_nodes(t: tree_lib.Tree, config: MCTSConfig,
                    expansions: Array | None = None) -> Array:
  """`[N]` nodes selection cannot use (`MCTSConfig.skip_exhausted`): a leaf
  it can neither expand (finished, or at max_depth) nor stop at (below the
  end gate, or unfinished where the gate takes finished solutions only), or
  an inner node whose children are all exhausted and that has no expansion
  left (`expansions [N]`: times each node was expanded; None: each inner
  node once)."""
  has_kids = t.expanded
  spent = has_kids
  if expansions is not None:
    spent &= expansions >= config.max_expansions
  stuck = (t.final | (t.depth >= config.max_depth)) & ~has_kids
  if config.stop_at_end_gate:
    stops = t.value >= config.end_gate
    if config.gate_requires_final:
      stops &= t.final
    stuck &= ~stops
  stuck &= t.used
  return _settle_upward(t, stuck, spent, every_child=True,
                        passes=config.max_depth + 1)


def finished_below(t: tree_lib.Tree, max_depth: int) -> Array:
  """`[N]` nodes with a final node in their subtree, themselves included."""
  final = t.final & t.used
  return _settle_upward(t, final, jnp.ones_like(final), every_child=False,
                        passes=max_depth)


def _settle_upward(t: tree_lib.Tree, base: Array, inner: Array, *,
                   every_child: bool, passes: int) -> Array:
  """`[N]` the fixed point of `base | (inner & children)`, where `children`
  is whether every child (`every_child`; True without children) or any child
  (False without children) holds: each pass settles one more level."""
  reduce = jnp.all if every_child else jnp.any

  def settle(_, flags):
    kid_flags = jnp.where(t.children != tree_lib.NO_CHILD,
                          flags[jnp.maximum(t.children, 0)], every_child)
    return base | (inner & reduce(kid_flags, axis=-1))
  return jax.lax.fori_loop(0, passes, settle, base)


def widens(t: tree_lib.Tree, config: MCTSConfig, expansions: Array
           ) -> Array:
  """`[N]` nodes due for another expansion by `MCTSConfig.widen_visits`
  (`expansions [N]`: times each node was expanded) and, with
  `widen_after_final`, with a final node below."""
  if not config.widen_visits:
    return jnp.zeros_like(t.used)
  due = ((expansions >= 1) & (expansions < config.max_expansions)
         & ~t.final & (t.depth < config.max_depth)
         & (t.visits >= config.widen_visits * expansions**2))
  if config.widen_after_final:
    due &= finished_below(t, config.max_depth)
  return due


def _select(t: tree_lib.Tree, config: MCTSConfig, key, skip=None,
            widen=None) -> Array:
  """Descends from the root to a node without children, passing over the
  nodes in `skip [N]` if given: then it also stops at a node whose children
  are all skipped (one to expand again, see `MCTSConfig.max_expansions`),
  and at a node in `widen [N]` (see `widens`)."""
  def is_inner(node):
    kids = t.children[node]
    open_ = kids != tree_lib.NO_CHILD
    if skip is not None:
      open_ &= ~skip[jnp.maximum(kids, 0)]
    inner = jnp.any(open_)
    return inner if widen is None else inner & ~widen[node]
  return jax.lax.while_loop(is_inner,
                            lambda n: _best_child(t, n, config, key, skip),
                            jnp.int32(tree_lib.ROOT_INDEX))


def _backup(t: tree_lib.Tree, leaf, active) -> tree_lib.Tree:
  """Leaf to root: `n += 1`; an inner node takes its children's
  visit-weighted mean value. Nothing changes where `active` is False."""
  def body(carry):
    t, node = carry
    visits = t.visits.at[node].add(1)
    kids = t.children[node]
    idx = jnp.maximum(kids, 0)
    n_c = jnp.where(kids != tree_lib.NO_CHILD, visits[idx], 0).astype(
        jnp.float32)
    total = jnp.sum(n_c)
    mean = jnp.sum(n_c * t.value[idx]) / jnp.maximum(total, 1.0)
    value = t.value.at[node].set(
        jnp.where(total > 0, mean, t.value[node]))
    return t.replace(visits=visits, value=value), t.parent[node]

  start = jnp.where(active, leaf, tree_lib.NO_PARENT)
  return jax.lax.while_loop(lambda c: c[1] != tree_lib.NO_PARENT, body,
                            (t, start))[0]


# --- batched helpers ----------------------------------------------------------


def append_steps(prefix: Array, lengths: Array, step: Array, step_len: Array):
  """Appends `step [R, S]` after each row's `lengths` in `prefix [R, L]`.

  Returns `[R, L]` rows and lengths; `L` must leave room for the step.
  """
  write = jax.vmap(lambda row, s, at: jax.lax.dynamic_update_slice(
      row, s, (at,)))
  return write(prefix, step, lengths), lengths + step_len


# `_row_keys` phases of selection's tie-breaks and of `stochastic_budget`'s
# draws (0 and up: expansion, rollouts).
_TIE_PHASE = 2**31 - 1
_BUDGET_PHASE = 2**31 - 2


def _row_keys(keys: Array, iterations: Array, phase, count: int) -> Array:
  """`[B * count]` keys for one phase of every question's current iteration
  (from the question's own key and iteration count only)."""
  def one(key, iteration):
    key = jax.random.fold_in(jax.random.fold_in(key, iteration), phase)
    return jax.random.split(key, count)
  return jax.vmap(one)(keys, iterations).reshape(-1)


def concat_value_fn(score: Callable[[Array, Array], Array]) -> ValueFn:
  """A `ValueFn` from `score(tokens [R, L], lengths [R]) -> [R]` applied to
  each prefix + step written out in full."""
  def value_fn(prefix, lengths, steps, step_lengths, k):
    prefix = jnp.repeat(prefix, k, axis=0)
    pad = jnp.zeros((prefix.shape[0], steps.shape[1]), prefix.dtype)
    rows, new_len = append_steps(jnp.concatenate([prefix, pad], 1),
                            jnp.repeat(lengths, k), steps, step_lengths)
    return score(rows, new_len)
  return value_fn


def narrowest_width(fn: Callable[..., object], prefix: Array, lengths: Array,
                    *operands, fractions=(0.25, 0.5)):
  """`fn(prefix[:, :w], lengths, *operands)` for the narrowest of a few fixed
  widths w that holds every row.

  Prefix buffers are as wide as the deepest possible node, but early in a
  search every prefix is short; encoding the padding would dominate the cost.
  Each width is a `lax.switch` branch, so shapes stay static. Rows whose
  output is not needed should pass length 1.
  """
  full = prefix.shape[1]
  widths = sorted({min(full, -(-int(full * f) // 16) * 16) for f in fractions}
                  | {full})
  index = jnp.sum(jnp.max(lengths) > jnp.array(widths[:-1]))
  branches = [
      lambda p, l, *ops, w=w: fn(p[:, :w], l, *ops) for w in widths]
  return jax.lax.switch(index, branches, prefix, lengths, *operands)


def _where_rows(mask: Array, new, old):
  """Row-wise `where` over two pytrees with leaves `[B, ...]`."""
  pick = lambda a, b: jnp.where(mask.reshape(-1, *[1] * (a.ndim - 1)), a, b)
  return jax.tree.map(pick, new, old)


@struct.dataclass
class TokenContext:
  """Prefixes as token rows `[R, W]` (room for more steps) and `lengths [R]`."""

  tokens: Array
  lengths: Array


@dataclasses.dataclass(frozen=True)
class TokenModels:
  """Models that read whole token prefixes: each call re-encodes them.

  Attributes:
    policy_fn: proposes steps (see module docstring).
    value_fn: scores each prefix + step.
  """

  policy_fn: PolicyFn
  value_fn: ValueFn
  # Context rows hold their children (prefix + step) too.
  step_room = 1

  def init(self, tree):
    del tree
    return ()

  def context(self, tree, memory, node, *, max_depth, width):
    """Token rows `[B, width]` of each node's prefix."""
    del memory
    tokens, lengths = tree_lib.gather_prefix(tree, node, max_depth=max_depth,
                                             max_len=width)
    return TokenContext(tokens, lengths)

  def propose(self, ctx: TokenContext, needed, keys, k):
    """Proposals `[R * k]`, their values and the contexts prefix + step."""
    lengths = jnp.where(needed, ctx.lengths, 1)  # unneeded rows: cheapest
    proposals = narrowest_width(
        lambda p, l, ks: self.policy_fn(p, l, ks, k), ctx.tokens, lengths,
        keys)
    values = narrowest_width(
        lambda p, l, st, sl: self.value_fn(p, l, st, sl, k), ctx.tokens,
        lengths, proposals.tokens, proposals.lengths)
    child = TokenContext(*append_steps(
        jnp.repeat(ctx.tokens, k, 0), jnp.repeat(ctx.lengths, k),
        proposals.tokens, proposals.lengths))
    return proposals, values, child

  def descend(self, ctx: TokenContext, child: TokenContext, rows: Array
              ) -> TokenContext:
    """The contexts of child rows `rows [R]` (row i of `ctx` continued by
    child `rows[i]`)."""
    del ctx
    return jax.tree.map(lambda x: x[rows], child)

  def store(self, memory, new_index, child, proposals):
    del new_index, child, proposals
    return memory


def _expand(models, tree, memory, leaf, active, keys, iteration, config):
  """Phase 2 for every tree: returns (tree, memory, expanded [B] (the leaf
  was expanded), added [B] (and gained a child), policy and value token
  counts [B])."""
  b, k = tree.batch_size, config.branch
  expandable = active & ~tree.final[jnp.arange(b), leaf] & (
      tree.depth[jnp.arange(b), leaf] < config.max_depth)
  # An expandable leaf is above max_depth.
  width = tree.question_tokens.shape[1] + (
      config.max_depth - 1 + models.step_room) * config.max_step_len
  ctx = models.context(tree, memory, leaf, max_depth=config.max_depth,
                       width=width)
  proposals, values, child = models.propose(
      ctx, expandable, _row_keys(keys, iteration, 0, k), k)
  reshape = lambda x: x.reshape(b, k, *x.shape[1:])
  tree, new_index = tree_lib.add_children(
      tree, leaf, reshape(proposals.tokens), reshape(proposals.lengths),
      reshape(values), reshape(proposals.is_final),
      jnp.broadcast_to(expandable[:, None], (b, k)))
  memory = models.store(memory, new_index, child, proposals)
  added = jnp.any(new_index != tree_lib.NO_CHILD, axis=1)
  policy_tokens = jnp.sum(reshape(proposals.lengths), 1) * expandable
  value_tokens = jnp.sum(reshape(child.lengths), 1) * expandable
  return tree, memory, expandable, added, policy_tokens, value_tokens


def _rollout(models, tree, memory, leaf, added, first_new, keys, tie_keys,
             iteration, config, skip=None):
  """Phase 3 for every tree whose leaf gained children (`added [B]`),
  from the best new child (slot `first_new [B]` or later: a node expanded
  again keeps its old children) not in `skip [B, N]`: returns (tree, the
  `Rollout`s, policy and value token counts)."""
  b, d = tree.batch_size, config.roll_branch
  rows = jnp.arange(b)
  old = jnp.arange(tree.num_slots) < first_new[:, None]
  skip = old if skip is None else skip | old
  best = jax.vmap(lambda t, n, key, sk: _best_child(t, n, config, key, sk),
                  in_axes=(0, 0, 0, None if skip is None else 0))(
                      tree, leaf, tie_keys, skip)
  best = jnp.where(added, best, tree_lib.ROOT_INDEX)
  rolling = added & ~tree.final[rows, best]
  # The last rollout step starts from max_depth + m - 1 steps at most (the
  # context it descends to is not used, and may not fit).
  width = tree.question_tokens.shape[1] + (
      config.max_depth + config.roll_forward_steps - 1 + models.step_room
  ) * config.max_step_len
  ctx = models.context(tree, memory, best, max_depth=config.max_depth,
                       width=width)

  def step(i, carry):
    ctx, rolling, v_max, p_tok, v_tok, taken = carry
    proposals, values, child = models.propose(
        ctx, rolling, _row_keys(keys, iteration, 1 + i, d), d)
    values = values.reshape(b, d)
    pick = jnp.argmax(values, axis=1)
    chosen = rows * d + pick
    v_max = jnp.where(rolling, jnp.maximum(v_max, values[rows, pick]), v_max)
    ctx = _where_rows(rolling, models.descend(ctx, child, chosen), ctx)
    p_tok += jnp.sum(proposals.lengths.reshape(b, d), 1) * rolling
    v_tok += jnp.sum(child.lengths.reshape(b, d), 1) * rolling
    ends = rolling & proposals.is_final[chosen]
    taken = taken.replace(
        steps=taken.steps.at[:, i].set(
            proposals.tokens[chosen] * rolling[:, None]),
        step_lengths=taken.step_lengths.at[:, i].set(
            proposals.lengths[chosen] * rolling),
        value=jnp.where(ends, values[rows, pick], taken.value))
    rolling = rolling & ~ends
    return ctx, rolling, v_max, p_tok, v_tok, taken

  zeros = jnp.zeros((b,), jnp.int32)
  init = (ctx, rolling, jnp.zeros((b,), jnp.float32), zeros, zeros,
          Rollout.none(b, config).replace(node=best))
  _, _, v_max, p_tok, v_tok, taken = init
  if config.roll_forward_steps:  # a loop body is traced even for no steps
    _, _, v_max, p_tok, v_tok, taken = jax.lax.fori_loop(
        0, config.roll_forward_steps, step, init)
  v_best = tree.value[rows, best]
  blended = (1.0 - config.alpha) * v_best + config.alpha * v_max
  value = tree.value.at[rows, best].set(
      jnp.where(added & ~tree.final[rows, best], blended, v_best))
  visits = tree.visits.at[rows, best].add(added.astype(jnp.int32))
  return tree.replace(value=value, visits=visits), taken, p_tok, v_tok


# --- the search ---------------------------------------------------------------


def search(
    models,
    question_tokens: Array,
    question_len: Array,
    keys: Array,
    config: MCTSConfig,
    token_budget: Array | None = None,
) -> SearchResult:
  """Runs MCTS* on B questions at once.

  Args:
    models: the policy and the value model behind `init` / `context` /
      `propose` / `descend` / `store` (`TokenModels` or `CachedLMModels`).
    question_tokens: `[B, Q]` right-padded with 0.
    question_len: `[B]`.
    keys: `[B]` one PRNG key per question: a question's search does not
      depend on the other questions of the batch.
    config: search settings.
    token_budget: `[]` or `[B]` int, replaces `config.token_budget` as a
      traced value, so one compiled search serves every budget (<= 0: no
      token budget).
  """
  b = question_tokens.shape[0]
  budget = jnp.asarray(config.token_budget if token_budget is None
                       else token_budget, jnp.int32)
  tree = tree_lib.init_tree(question_tokens, question_len,
                            num_slots=config.num_slots,
                            branching=config.max_children,
                            max_step_len=config.max_step_len)
  zeros = jnp.zeros((b,), jnp.int32)
  state = SearchResult(tree=tree, expansions=jnp.zeros_like(tree.visits),
                       answer_node=zeros, answer_is_rollout=zeros > 0,
                       best_rollout=Rollout.none(b, config),
                       passed_gate=zeros > 0,
                       iterations=zeros, policy_tokens=zeros,
                       value_tokens=zeros)

  def exhausted(s: SearchResult) -> Array | None:
    if not config.skip_exhausted:
      return None
    return jax.vmap(lambda t, e: exhausted_nodes(t, config, e))(
        s.tree, s.expansions)

  def running(s: SearchResult, skip: Array | None) -> Array:
    ok = ~s.passed_gate & (s.iterations < config.num_iterations)
    if skip is not None:  # nothing left to select
      ok &= ~skip[:, tree_lib.ROOT_INDEX]
    spent = s.policy_tokens
    share = 0.5  # of a mean iteration's tokens, still to fit the budget
    if config.stochastic_budget:  # U(0, 1), one per question and iteration
      share = jax.vmap(jax.random.uniform)(
          _row_keys(keys, s.iterations, _BUDGET_PHASE, 1))
    mean_iteration = spent / jnp.maximum(s.iterations, 1)
    return ok & ((budget <= 0) | (spent + share * mean_iteration < budget))

  # The exhausted set of the current trees rides in the carry: the loop's
  # condition and the next iteration's selection read one computation.
  def iteration(carry):
    s, memory, skip = carry
    active = running(s, skip)
    tie_keys = _row_keys(keys, s.iterations, _TIE_PHASE, 1)
    widen = None
    if config.widen_visits:
      widen = jax.vmap(lambda t, e: widens(t, config, e))(
          s.tree, s.expansions)
    leaf = jax.vmap(lambda t, key, sk, w: _select(t, config, key, sk, w),
                    in_axes=(0, 0, None if skip is None else 0,
                             None if widen is None else 0))(
                        s.tree, tie_keys, skip, widen)
    value_at_leaf = s.tree.value[jnp.arange(b), leaf]
    gate = active & (leaf != tree_lib.ROOT_INDEX) & (
        value_at_leaf >= config.end_gate)
    gate &= config.stop_at_end_gate
    if widen is not None:  # a node stopped at to widen is no leaf
      gate &= ~widen[jnp.arange(b), leaf]
    if config.gate_requires_final:
      gate &= s.tree.final[jnp.arange(b), leaf]
    active &= ~gate
    tree, memory, expanded, added, p1, v1 = _expand(
        models, s.tree, memory, leaf, active, keys, s.iterations, config)
    tree, rollout, p2, v2 = _rollout(
        models, tree, memory, leaf, added, s.tree.num_nodes, keys, tie_keys,
        s.iterations, config, skip)
    if config.rollout_answers:
      better = rollout.value > s.best_rollout.value
      s = s.replace(
          best_rollout=_where_rows(better, rollout, s.best_rollout))
    tree = jax.vmap(_backup)(tree, leaf, active)
    s = s.replace(
        tree=tree,
        expansions=s.expansions.at[jnp.arange(b), leaf].add(
            expanded.astype(jnp.int32)),
        answer_node=jnp.where(gate, leaf, s.answer_node),
        passed_gate=s.passed_gate | gate,
        iterations=s.iterations + active,
        policy_tokens=s.policy_tokens + p1 + p2,
        value_tokens=s.value_tokens + v1 + v2,
    )
    return s, memory, exhausted(s)

  s, _, _ = jax.lax.while_loop(
      lambda c: jnp.any(running(c[0], c[2])), iteration,
      (state, models.init(tree), exhausted(state)))
  best = best_value_node(s.tree, prefer_final=config.prefer_final_answer)
  answer = jnp.where(s.passed_gate, s.answer_node, best)
  if not config.rollout_answers:
    return s.replace(answer_node=answer)
  # A finished rollout ranks as a final node does.
  node_rank = _answer_rank(s.tree, best, config.prefer_final_answer)
  rollout_rank = s.best_rollout.value + 2.0 * config.prefer_final_answer
  use_rollout = (~s.passed_gate & s.best_rollout.finished &
                 (rollout_rank > node_rank))
  return s.replace(
      answer_node=jnp.where(use_rollout, s.best_rollout.node, answer),
      answer_is_rollout=use_rollout)


def _answer_rank(tree: tree_lib.Tree, node: Array, prefer_final: bool
                 ) -> Array:
  """`[B]` how `best_value_node` ranks each tree's `node` (-inf: the root)."""
  rows = jnp.arange(tree.batch_size)
  rank = tree.value[rows, node] + 2.0 * prefer_final * tree.final[rows, node]
  return jnp.where(node == tree_lib.ROOT_INDEX, -jnp.inf, rank)


def best_value_node(tree: tree_lib.Tree, *, prefer_final: bool = False
                    ) -> Array:
  """`[B]` the non-root node of highest value (the root if it is alone);
  with `prefer_final`, the final node of highest value where one exists."""
  nodes = jnp.arange(tree.num_slots)
  candidate = tree.used & (nodes != tree_lib.ROOT_INDEX)
  # Values lie in [0, 1]: +2 ranks every final node above every other one.
  rank = tree.value + (2.0 * tree.final if prefer_final else 0.0)
  best = jnp.argmax(jnp.where(candidate, rank, -jnp.inf), axis=1)
  return jnp.where(tree.num_nodes > 1, best, tree_lib.ROOT_INDEX)


def answer_rows(result: SearchResult, *, max_depth: int):
  """Question + steps of each search's answer, on the host: the answer
  node's prefix, followed by the rollout's steps where `answer_is_rollout`.

  Returns:
    `tokens [B, L]` (right-padded) and `lengths [B]`.
  """
  result = jax.device_get(result)
  batch, num_slots = result.tree.parent.shape
  answer = np.zeros((batch, num_slots), bool)
  answer[np.arange(batch), result.answer_node] = True
  tokens, lengths, _ = tree_lib.prefix_rows(result.tree, answer,
                                            max_depth=max_depth)
  rollout = result.best_rollout
  _, m, width = rollout.steps.shape
  if not m or not result.answer_is_rollout.any():
    return tokens, lengths
  tokens = np.concatenate(
      [tokens, np.zeros((batch, m * width), tokens.dtype)], axis=1)
  lengths = lengths.copy()
  for i in range(m):  # each rollout step after the answer so far
    count = np.where(result.answer_is_rollout, rollout.step_lengths[:, i], 0)
    rows, cols = np.nonzero(np.arange(width) < count[:, None])
    tokens[rows, lengths[rows] + cols] = rollout.steps[rows, i, cols]
    lengths += count
  return tokens, lengths


# --- language models ------------------------------------------------------------


def lm_policy_fn(policy, sampler_config) -> PolicyFn:
  """A `PolicyFn` that samples steps from a policy `Transformer`."""
  def fn(prefix, lengths, keys, num_samples):
    samples, _ = sampling.sample_step_with_model(
        policy, prefix, lengths, keys, sampler_config, num_samples)
    return Proposals(samples.tokens, samples.lengths, samples.is_final)
  return fn


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "sampler_config", "config", "cache_nodes"))
def search_lm(
    graphdef,
    state,
    question_tokens: Array,
    question_len: Array,
    keys: Array,
    sampler_config,
    config: MCTSConfig,
    cache_nodes: bool = True,
    token_budget: Array | None = None,
) -> SearchResult:
  """Jitted `search` with a policy and a `ValueModel`.

  Args:
    graphdef, state: `nnx.split((policy, value_model))`; with a shared
      backbone the policy's weights are stored once.
    question_tokens, question_len, keys, config, token_budget: as in
      `search`.
    sampler_config: how the policy samples a step; its `max_step_len` must
      equal `config.max_step_len`.
    cache_nodes: keep every node's step keys/values (`CachedLMModels`) so a
      prefix is never re-encoded; False re-encodes prefixes each call (less
      memory).
  """
  if sampler_config.max_step_len != config.max_step_len:
    raise ValueError(
        f"sampler max_step_len={sampler_config.max_step_len} differs from "
        f"search max_step_len={config.max_step_len}")
  policy, value_model = nnx.merge(graphdef, state)
  if cache_nodes:
    models = CachedLMModels(policy, value_model, sampler_config)
  else:
    models = TokenModels(lm_policy_fn(policy, sampler_config),
                         value_model.score_continuations)
  return search(models, question_tokens, question_len, keys, config,
                token_budget)


@struct.dataclass
class CacheContext:
  """Prefixes held as KV caches of the policy and the value model.

  Attributes:
    policy: policy cache `[R, K, W, D]` per layer (slot = position).
    value: value-model backbone cache, likewise.
    hidden: `[R, E]` policy hidden state at each prefix's last token.
    lengths: `[R]` prefix lengths.
  """

  policy: transformer_lib.KVCache
  value: transformer_lib.KVCache
  hidden: Array
  lengths: Array


@struct.dataclass
class NewSteps:
  """Steps just proposed after cached prefixes, `R * k` rows.

  Attributes:
    policy: the steps' own policy keys/values `[R * k, K, S, D]` per layer.
    value: the same for the value model's backbone.
    hidden: `[R * k, E]` policy hidden state at each step's last token.
    lengths: `[R * k]` lengths of prefix + step.
  """

  policy: transformer_lib.KVCache
  value: transformer_lib.KVCache
  hidden: Array
  lengths: Array


@dataclasses.dataclass(frozen=True)
class CachedLMModels:
  """A policy LM and a `ValueModel` that keep each node's step keys/values
  (`node_cache`): a node's prefix is assembled from its ancestors' slices and
  is never re-encoded; a new step costs only its own tokens, and the samples
  of one prefix read its cache once (`transformer.PrefixedCache`)."""

  policy: transformer_lib.Transformer
  value_model: value_head.ValueModel
  sampler_config: sampling.SamplerConfig
  # New steps keep their own slots: a context holds its prefix only.
  step_room = 0

  def init(self, tree: tree_lib.Tree):
    """Encodes the questions once; empty per-node slices."""
    q, q_len = tree.question_tokens, tree.question_len
    _, hidden, policy_q = sampling.prefill(self.policy, q, q_len)
    backbone = self.value_model.backbone
    value_q = transformer_lib.KVCache.zeros(backbone.config, *q.shape)
    _, value_q = backbone.hidden(q, transformer_lib.default_positions(q),
                                 value_q)
    node_hidden = jnp.zeros((tree.batch_size, tree.num_slots,
                             hidden.shape[-1]), hidden.dtype)
    return dict(
        policy_question=policy_q,
        value_question=value_q,
        policy_steps=node_cache.empty_steps(self.policy.config, tree),
        value_steps=node_cache.empty_steps(backbone.config, tree),
        hidden=node_hidden.at[:, tree_lib.ROOT_INDEX].set(hidden),
    )

  def context(self, tree, memory, node, *, max_depth, width):
    """Caches `[B, K, width, D]` of each node's prefix."""
    assemble = lambda q, s: node_cache.assemble(
        tree, q, s, node, max_depth=max_depth, width=width)
    policy, lengths = assemble(memory["policy_question"],
                               memory["policy_steps"])
    value, _ = assemble(memory["value_question"], memory["value_steps"])
    hidden = memory["hidden"][jnp.arange(tree.batch_size), node]
    return CacheContext(policy, value, hidden, lengths)

  def propose(self, ctx: CacheContext, needed, keys, k):
    """Proposals `[R * k]`, their values and their `NewSteps`."""
    del needed  # every row costs the same: only the new step is encoded
    samples, policy = sampling.sample_from_cache(
        self.policy, ctx.policy, ctx.hidden, ctx.lengths, keys,
        self.sampler_config, k)
    values, value = self.value_model.score_from_cache(
        ctx.value, ctx.lengths, samples.tokens, samples.lengths, k)
    child = NewSteps(policy, value, samples.last_hidden,
                     jnp.repeat(ctx.lengths, k) + samples.lengths)
    return (Proposals(samples.tokens, samples.lengths, samples.is_final),
            values, child)

  def descend(self, ctx: CacheContext, child: NewSteps, rows: Array
              ) -> CacheContext:
    """`ctx` with row i continued by new step `rows[i]` (its slices written
    after the prefix). A step that does not fit the cache is written over
    its last slots instead: such a context must not be used."""
    take = lambda x: x[rows]
    extend = lambda cache, steps: node_cache.insert(
        cache, ctx.lengths, jax.tree.map(take, steps))
    return CacheContext(extend(ctx.policy, child.policy),
                        extend(ctx.value, child.value), child.hidden[rows],
                        child.lengths[rows])

  def store(self, memory, new_index, child: NewSteps, proposals):
    """Keeps the new children's step slices and last hidden states."""
    del proposals
    memory = dict(memory)
    for name, steps in (("policy_steps", child.policy),
                        ("value_steps", child.value), ("hidden", child.hidden)):
      memory[name] = node_cache.store(memory[name], new_index, steps)
    return memory

"""Building blocks of one self-training iteration (SPEC Algorithm 1).

    trees   = search_lm(π, V, questions)                       (device, batched)
    correct = label_final_nodes(trees, task, references)        (host: verifier)
    D_V     = value_targets.value_records(trees, targets)       (Eq. 1–2)
    D_G     = traces.select_traces(trees, correct)              (verified traces)
    V <- value steps on D_V ;  π <- SFT steps on D_G
    accuracy = greedy_accuracy(π, test questions)

The oracle (answer or verifier) only labels finished leaves of training trees;
at evaluation the policy decides and the verifier grades.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from restmcts_jax import sampling
from restmcts_jax.rewards import traces as traces_lib
from restmcts_jax.rewards import value_targets
from restmcts_jax.search import baselines
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import Tokenizer


def encode_rows(tokenizer: Tokenizer, texts: Sequence[str], width: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded token rows `[R, width]` and lengths `[R]`.

  Raises:
    ValueError: naming the first text longer than `width` tokens.
  """
  tokens = np.full((len(texts), width), 0, np.int32)
  lengths = np.zeros((len(texts),), np.int32)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text)
    if len(ids) > width:
      raise ValueError(f"text {i} has {len(ids)} tokens, more than {width}: "
                       f"{text[:60]!r}")
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths


def label_final_nodes(
    tree: tree_lib.Tree,
    task: registry.Task,
    references: Sequence,
    decode: Callable[[Sequence[int]], str],
    *,
    max_depth: int,
) -> np.ndarray:
  """`[B, N]` whether each final node's solution is correct (host side)."""
  final = np.asarray(tree.final) & np.asarray(tree.used)
  tokens, lengths, question = tree_lib.prefix_rows(tree, final,
                                                   max_depth=max_depth)
  correct = np.zeros(final.shape, bool)
  correct[final] = [
      task.is_correct(decode(row[:n].tolist()), references[q])
      for row, n, q in zip(tokens, lengths, question)
  ]
  return correct


def iteration_data(tree: tree_lib.Tree, correct: np.ndarray, *,
                   max_depth: int, top_k: int, min_reward: float):
  """`(D_V records, D_G traces)` of a batch of finished trees."""
  targets = jax.device_get(value_targets.infer_value_targets(
      tree, jnp.asarray(correct), max_depth=max_depth))
  records = value_targets.value_records(tree, targets, max_depth=max_depth)
  traces = traces_lib.select_traces(tree, correct, max_depth=max_depth,
                                    top_k=top_k, min_reward=min_reward)
  return records, traces


def greedy_accuracy(
    policy,
    tokenizer: Tokenizer,
    task: registry.Task,
    problems: Sequence[registry.Problem],
    sampler_config: sampling.SamplerConfig,
    *,
    max_depth: int,
    question_width: int,
) -> tuple[float, list[str]]:
  """CoT accuracy: one greedy solution per problem, graded by the verifier.

  Returns the accuracy and the solution texts.
  """
  config = dataclasses.replace(sampler_config, temperature=0.0)
  tokens, lengths = encode_rows(tokenizer, [p.question for p in problems],
                                question_width)
  graphdef, state = nnx.split(policy)

  @jax.jit
  def solve(state, tokens, lengths):
    model = nnx.merge(graphdef, state)
    return baselines.sample_solutions(
        mcts_star.lm_policy_fn(model, config), tokens, lengths,
        jax.random.split(jax.random.key(0), tokens.shape[0]), num_samples=1,
        max_depth=max_depth, max_step_len=config.max_step_len)

  out = jax.device_get(solve(state, jnp.asarray(tokens), jnp.asarray(lengths)))
  texts = [tokenizer.decode(row[:n].tolist())
           for row, n in zip(out.tokens, out.lengths)]
  correct = [task.is_correct(t, p.reference) for t, p in zip(texts, problems)]
  return float(np.mean(correct)), texts

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
import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from restmcts_jax import checkpoint
from restmcts_jax import sampling
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.rewards import traces as traces_lib
from restmcts_jax.rewards import value_targets
from restmcts_jax.search import baselines
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import SentencePieceTokenizer
from restmcts_jax.tokenizer import Tokenizer
from restmcts_jax.training import batching
from restmcts_jax.training import optim
from restmcts_jax.training import steps as training_steps


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


# --- the loop -------------------------------------------------------------------


def _train(graphdef, state, tx, loss_fn, batches, steps_):
  """`steps_` optimizer steps cycling over `batches`; returns the state and
  the mean loss."""
  step = training_steps.make_train_step(graphdef, loss_fn, tx)
  losses = []
  for i in range(steps_):
    state, metrics = step(state, batches[i % len(batches)])
    losses.append(float(metrics["loss"]))
  return state, float(np.mean(losses)) if losses else float("nan")


def _rows_to_lists(tokens, lengths):
  return [row[:n].tolist() for row, n in zip(tokens, lengths)]


def run(config, workdir) -> list[dict]:
  """Runs Algorithm 1 on Game of 24 and returns the metrics of every
  iteration (also appended to `workdir/metrics.jsonl`).

  Resumable: a checkpoint is written after the warm start and after every
  iteration; rerunning with the same workdir continues from the last one.
  """
  if config.task != "game24":
    raise ValueError(f"config.task={config.task!r}: the self-training loop "
                     "supports 'game24' so far")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task = registry.get_task("game24")
  splits = game24.splits(seed=config.seed)
  test = [registry.Problem(game24.question_text(p.numbers), p.numbers)
          for p in splits.test[:config.eval.num_test]]

  # Format-only texts (legal moves, rarely 24): the tokenizer's corpus and
  # the warm start's data.
  corpus = game24.warmstart_corpus(splits.train, config.tokenizer.corpus_size,
                                   seed=config.seed)
  tokenizer_path = workdir / "tokenizer.model"
  if tokenizer_path.is_file():
    tokenizer = SentencePieceTokenizer.load(tokenizer_path)
  else:
    tokenizer = SentencePieceTokenizer.train(
        corpus + [p.question for p in test], workdir / "tokenizer",
        vocab_size=config.tokenizer.vocab_size)
  m = config.model
  model_config = transformer_lib.TransformerConfig(
      vocab_size=tokenizer.vocab_size, embed_dim=m.embed_dim,
      num_layers=m.num_layers, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, mlp_dim=m.mlp_dim)
  policy = transformer_lib.Transformer(model_config,
                                       rngs=nnx.Rngs(config.seed))
  value_model = value_head.make_value_model(
      policy, share_backbone=False, rngs=nnx.Rngs(config.seed + 1))
  policy_graph, policy_params = nnx.split(policy)
  value_graph, value_params = nnx.split(value_model)
  policy_tx = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=config.train.learning_rate, warmup_steps=10,
      total_steps=config.warmstart.steps + config.iterations *
      config.train.policy_steps))
  value_tx = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=config.train.learning_rate, warmup_steps=10,
      total_steps=config.iterations * config.train.value_steps))
  state = dict(policy=training_steps.init_state(policy_params, policy_tx),
               value=training_steps.init_state(value_params, value_tx))

  s = config.sampler
  sampler_config = sampling.SamplerConfig(
      max_step_len=s.max_step_len, temperature=s.temperature, top_k=s.top_k,
      top_p=s.top_p, stop_token_ids=tokenizer.step_delimiter_ids(),
      eos_token_id=tokenizer.eos_id,
      answer_marker_ids=tuple(tokenizer.encode(game24.ANSWER_MARKER)))
  search_config = mcts_star.MCTSConfig(
      max_depth=config.max_depth, max_step_len=s.max_step_len,
      **config.search.to_dict())

  checkpoints = checkpoint.Checkpointer(workdir / "checkpoints")
  metrics_path = workdir / "metrics.jsonl"
  no_records = dict(tokens=np.zeros((0, 1), np.int32),
                    lengths=np.zeros((0,), np.int32),
                    target=np.zeros((0,), np.float32))
  records = no_records
  if checkpoints.latest_step() is not None:
    state, records, meta = checkpoints.restore(checkpoint.abstract_like(state))
    records = records or no_records
    start = meta["iteration"]
    logging.info("resumed after iteration %d from %s", start,
                 checkpoints.directory)
  else:
    # Warm start: SFT on the format-only corpus.
    examples = [(tokenizer.encode(t), len(tokenizer.encode(t.split("\n")[0]))
                 + 1) for t in corpus]
    batches = list(batching.sft_batches(examples, config.warmstart.batch_size,
                                        seed=config.seed))
    state["policy"], loss = _train(policy_graph, state["policy"], policy_tx,
                                   training_steps.sft_loss, batches,
                                   config.warmstart.steps)
    logging.info("warm start: %d SFT steps, loss %.3f", config.warmstart.steps,
                 loss)
    metrics_path.write_text("")
    checkpoints.save(0, state, {}, dict(iteration=0))
    start = 0

  rng = np.random.default_rng(config.seed)
  for iteration in range(start, config.iterations):
    policy = nnx.merge(policy_graph, state["policy"].params)
    value_model = nnx.merge(value_graph, state["value"].params)
    graphdef, search_state = nnx.split((policy, value_model))
    # MCTS* over training questions, labelled by the verifier.
    picks = np.random.default_rng([config.seed, iteration]).choice(
        len(splits.train), config.search_questions, replace=False)
    puzzles = [splits.train[i].numbers for i in picks]
    new_records, new_traces, solved, tokens_used = [], [], 0, 0
    for lo in range(0, len(puzzles), config.search_batch):
      chunk = puzzles[lo:lo + config.search_batch]
      questions, qlen = encode_rows(
          tokenizer, [game24.question_text(p) for p in chunk],
          config.question_width)
      keys = jax.random.split(jax.random.fold_in(
          jax.random.key(config.seed), iteration * 1_000_003 + lo), len(chunk))
      result = jax.device_get(mcts_star.search_lm(
          graphdef, search_state, jnp.asarray(questions), jnp.asarray(qlen),
          keys, sampler_config, search_config))
      correct = label_final_nodes(result.tree, task, chunk, tokenizer.decode,
                                  max_depth=config.max_depth)
      solved += int(correct.any(axis=1).sum())
      tokens_used += int(result.policy_tokens.sum())
      recs, traces = iteration_data(
          result.tree, correct, max_depth=config.max_depth,
          top_k=config.train.traces_per_question,
          min_reward=config.train.min_reward)
      new_records.append(recs)
      new_traces += [(row[:n].tolist(), int(q)) for row, n, q in zip(
          traces.tokens, traces.lengths, traces.question_len)]
    # D_V accumulates over iterations; D_G is this iteration's traces.
    value_rows = _rows_to_lists(records["tokens"], records["lengths"]) + [
        row for r in new_records for row in _rows_to_lists(r.tokens,
                                                           r.lengths)]
    all_targets = np.concatenate(
        [records["target"]] + [r.target for r in new_records])
    value_loss = policy_loss = float("nan")
    if value_rows:
      batches = list(batching.value_batches(
          value_rows, all_targets, config.train.batch_size,
          seed=int(rng.integers(1 << 30))))
      state["value"], value_loss = _train(
          value_graph, state["value"], value_tx, training_steps.value_loss,
          batches, config.train.value_steps)
    if new_traces:
      batches = list(batching.sft_batches(new_traces, config.train.batch_size,
                                          seed=int(rng.integers(1 << 30))))
      state["policy"], policy_loss = _train(
          policy_graph, state["policy"], policy_tx, training_steps.sft_loss,
          batches, config.train.policy_steps)
    accuracy, _ = greedy_accuracy(
        nnx.merge(policy_graph, state["policy"].params), tokenizer, task, test,
        sampler_config, max_depth=config.max_depth,
        question_width=config.question_width)
    width = max(len(r) for r in value_rows) if value_rows else 1
    padded = np.zeros((len(value_rows), width), np.int32)
    for i, row in enumerate(value_rows):
      padded[i, :len(row)] = row
    records = dict(tokens=padded,
                   lengths=np.array([len(r) for r in value_rows], np.int32),
                   target=all_targets.astype(np.float32))
    metrics = dict(iteration=iteration + 1, greedy_accuracy=accuracy,
                   search_solved=solved / len(puzzles),
                   search_policy_tokens=tokens_used,
                   value_records=len(value_rows), traces=len(new_traces),
                   value_loss=value_loss, policy_loss=policy_loss)
    logging.info("iteration %d: %s", iteration + 1, metrics)
    with metrics_path.open("a") as f:
      f.write(json.dumps(metrics) + "\n")
    checkpoints.save(iteration + 1, state,
                     records if len(records["target"]) else {},
                     dict(iteration=iteration + 1))
  return [json.loads(l) for l in metrics_path.read_text().splitlines()]

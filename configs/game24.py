"""Game of 24 self-training on CPU: the built-in default (~20 min on 2 cores).

    python -m restmcts_jax.main --config configs/game24.py --workdir runs/game24

Sized from measurements: with a 300-step warm start (loss 1.6) or sampling at
temperature 1.0, the policy's steps were too sloppy for any searched tree to
reach 24; with 1,500 steps (loss 0.54), temperature 0.7 and b = 2 (deeper trees
in 30 iterations), 3%, 6% and 5% of the searched puzzles were solved in the
first three iterations and greedy test accuracy went 0% -> 1% -> 2%.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "game24"
  config.mode = "rest_mcts"  # or "rest_em": SFT on outcome-filtered samples
  config.progress = True  # progress bars
  config.trees_per_iteration = 3  # HTML views of search trees per iteration
  # JSONL files of the gsm8k / math tasks (game24 ships its puzzles).
  config.data = ml_collections.ConfigDict(dict(train="", test=""))
  config.iterations = 5
  config.question_width = 16  # tokens of a question
  config.max_depth = 4  # 3 moves + the Answer line

  config.tokenizer = ml_collections.ConfigDict(
      dict(vocab_size=400, corpus_size=4000))
  config.model = ml_collections.ConfigDict(dict(
      embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
      mlp_dim=768, hf_checkpoint=""))
  config.sampler = ml_collections.ConfigDict(
      dict(temperature=0.7, top_k=0, top_p=1.0, max_step_len=24))
  config.warmstart = ml_collections.ConfigDict(
      dict(steps=1000, batch_size=32, learning_rate=1e-3))
  config.search = ml_collections.ConfigDict(dict(
      num_iterations=30, branch=2, roll_branch=1, roll_forward_steps=1,
      exploration=0.5, alpha=0.5, unvisited_bonus=0.9, end_gate=0.8,
      stop_at_end_gate=False))
  config.search_questions = 128  # training questions searched per iteration
  config.search_batch = 64  # questions per batched search call
  config.train = ml_collections.ConfigDict(dict(
      policy_steps=100, value_steps=100, batch_size=32, learning_rate=3e-4,
      traces_per_question=2, min_reward=0.0))
  # ReST-EM: solutions sampled per training question (6 x ~50 tokens: about
  # the policy tokens MCTS* spends per question).
  config.rest_em = ml_collections.ConfigDict(dict(num_samples=6))
  # Held-out evaluation: every method at `budget` CoT samples' worth of
  # tokens each iteration; after the last iteration also at `budgets`.
  # Tune on split="validation" (100 puzzles outside the test ranks).
  config.eval = ml_collections.ConfigDict(dict(
      num_test=100, split="test", methods="greedy,sc,bon,tot,mcts",
      budget=4, budgets="1,2,4,8", mcts_iterations=64, tot_branch=2))
  return config

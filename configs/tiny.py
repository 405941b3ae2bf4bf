"""Seconds-long Game of 24 self-training run, for tests."""

from configs import game24


def get_config():
  config = game24.get_config()
  config.tokenizer.vocab_size = 400
  config.tokenizer.corpus_size = 300
  config.model.update(embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64)
  config.sampler.temperature = 1.0
  config.warmstart.update(steps=4, value_steps=2, value_first_steps=2,
                          value_solutions=4, examples=300)
  config.warmstart.batch_size = 8
  config.iterations = 2
  config.search.update(num_iterations=3, branch=2, roll_forward_steps=1)
  config.search_questions = 4
  config.search_batch = 4
  config.train.policy_steps = 2
  config.train.value_steps = 2
  config.train.batch_size = 8
  config.eval.update(num_test=4, budget=2, budgets="2", mcts_iterations=4)
  config.rest_em.num_samples = 2
  config.trees_per_iteration = 1
  config.progress = False
  return config

"""Plain-text tables: a run's report from its metrics and evaluations."""

from restmcts_jax import tables


def test_text_table_aligns_columns_under_a_rule():
  assert tables.text_table(["a", "bb"], [[1, 22], [333, 4]]).splitlines() == [
      "  a | bb", "--------", "  1 | 22", "333 |  4"]


def test_run_report_in_percent_with_the_last_iterations_budgets():
  metrics = [dict(iteration=0, accuracy_greedy=0.01, accuracy_bon=0.02),
             dict(iteration=1, accuracy_greedy=0.06, accuracy_bon=0.125,
                  traces=14)]
  evaluations = [
      dict(iteration=0, method="bon", samples=4, accuracy=0.02,
           policy_tokens=190.2),
      dict(iteration=1, method="greedy", samples=1, accuracy=0.06,
           policy_tokens=46.0),
      dict(iteration=1, method="bon", samples=2, accuracy=0.09,
           policy_tokens=93.6),
      dict(iteration=1, method="bon", samples=4, accuracy=0.125,
           policy_tokens=187.4),
      dict(iteration=1, method="mcts", samples=4, accuracy=0.1,
           policy_tokens=195.0)]
  lines = tables.run_report(metrics, evaluations).splitlines()
  assert lines[1:5] == [
      "iteration | greedy |  BoN | traces",
      "----------------------------------",
      "        0 |    1.0 |  2.0 |      -",
      "        1 |    6.0 | 12.5 |     14"]
  assert lines[6].startswith("Iteration 1, accuracy %")
  # Greedy has one budget and its own column above; MCTS* lacks N = 2.
  assert lines[7:] == [
      "method |    N = 2 |      N = 4",
      "------------------------------",
      "   BoN | 9.0 (94) | 12.5 (187)",
      " MCTS* |        - | 10.0 (195)"]

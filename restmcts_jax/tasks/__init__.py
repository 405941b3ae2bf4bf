"""Tasks: questions, verifiers and data sets."""

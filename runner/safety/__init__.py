"""LLM safety: toy safety world, judges, evaluation harness, safety baselines, WaltzRL, RECAP."""

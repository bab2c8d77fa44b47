"""Differential privacy: accounting, DP estimators, Fréchet distance, embedders and the FreD recipe."""

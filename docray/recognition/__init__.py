"""Unified recognition: task catalogue, task selection, data, metrics, training engine, batch predictor."""

"""Tracking: atomic run records (results.json) and experiment trackers (W&B or none)."""

"""Data: text corpora, reasoning datasets and calibration sets, from the hub or ``data.root``."""

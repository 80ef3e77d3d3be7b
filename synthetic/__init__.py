"""The synthetic micrograph simulator behind make_synthetic_dataset.py."""

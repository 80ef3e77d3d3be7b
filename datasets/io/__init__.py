"""Micrograph and coordinate readers/writers and the dataset layout."""

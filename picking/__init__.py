"""Picking: dense scoring of whole micrographs, non-maximum suppression, pick-level evaluation."""

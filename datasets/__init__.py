"""Micrograph and annotation readers, the chunk writer, the chunk loader and the PU batch sampler."""

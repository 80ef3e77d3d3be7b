"""Readers, chunks, patch sampling, preprocessing, π and augmentation: everything between files and batches."""

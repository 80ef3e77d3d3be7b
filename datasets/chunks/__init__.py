"""The chunk contract, the chunk writer, the chunk loader and the streams."""

"""Small shared helpers: YAML config with CLI overrides, atomic file writes, run facts."""

"""What every package shares: the InputError, YAML config with overrides, atomic writes, run facts."""

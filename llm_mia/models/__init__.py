"""The only code that runs a model: loading, per-token statistics, generation."""

"""Dataset loaders (HF id or local file), builtin generated datasets and FL partitioners."""

"""Model builders: tiny offline LMs from config, HF models by id or local path, and their tokenizers."""

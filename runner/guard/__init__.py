"""Guard models: the Llama Guard format and scoring, guard evaluation, and the 1B-INT4 compression pipeline."""

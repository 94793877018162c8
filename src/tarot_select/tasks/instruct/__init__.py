"""LoRA instruction tuning (TAROT §5.4): LESS-format pool, MMLU / BBH targets, tiny language models (task kind to come)."""

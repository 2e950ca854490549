"""Checks that read a checkpoint before any benchmark: lint (tensors, config, tokenizer against
provenance), sanity (prompts, perplexity against the parents) and inference cost."""

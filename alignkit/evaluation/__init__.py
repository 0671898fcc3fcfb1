"""Evaluation of aligned encoder pairs: zero-shot classification and image-text retrieval."""

"""Data: tokenizers, corpora and datasets."""

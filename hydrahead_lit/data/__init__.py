"""Corpus preparation, streaming data and synthetic retrieval samples."""

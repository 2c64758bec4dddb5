"""Corpus preparation, streaming data and synthetic retrieval samples.

Modules: ``prepare`` (LitData chunks + ``manifest``), ``sources`` (input files), ``streaming``
(rows, mixtures, synthetic rows), ``synthetic`` + ``haystack`` (retrieval tasks), ``demo`` +
``lexicon`` (bundled procedural corpus and tokenizer). Heavy imports (litdata, transformers)
happen inside those modules, not here.
"""

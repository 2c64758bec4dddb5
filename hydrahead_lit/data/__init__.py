"""Corpus preparation, streaming data and synthetic retrieval samples.

Modules: ``prepare`` (LitData chunks + ``manifest``), ``sources`` (input files), ``streaming``
(rows, mixtures, synthetic rows), ``synthetic`` + ``haystack`` (retrieval tasks; their wording in
``templates``), ``demo`` (bundled procedural corpus and tokenizer; its sentences from ``grammar`` over
``lexicon``). ``lexicon``, ``grammar`` and ``templates`` are leaves. Heavy imports (litdata,
transformers) happen inside those modules, not here.
"""

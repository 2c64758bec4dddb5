"""Evaluation: RULER-style synthetic retrieval, held-out perplexity, cache and speed figures, reports.

``load`` (saved student or teacher), ``ruler`` (the task x length suite), ``metrics`` (RULER's string
matching as torchmetrics), ``perplexity``, ``efficiency``, ``report`` and ``compare`` (JSON, Markdown,
PNG), ``module`` (``EvalModule`` for ``python main.py test``), ``bench`` (efficiency of a model shape).
"""

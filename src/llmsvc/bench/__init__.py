"""``llmsvc bench``: drive any OpenAI-compatible endpoint and report what it measured.

Layers, lowest first: ``settings`` (the flags), ``stats`` (percentiles and the
summary), ``load`` (the reusable :func:`~llmsvc.bench.load.run_load`), ``report``
(text and JSON output) and ``cli``. Studies call :func:`run_load` directly.
"""

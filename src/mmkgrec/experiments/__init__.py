"""Experiments: the top of the training stack, above ``train/`` and ``evaluate/``.

Modules: :mod:`~.benchmark` (every dataset x model x seed cell, resumable), :mod:`~.spec` (its
options, each cell's RunSpec and hash), :mod:`~.results` (CSV upserts, per-user arrays),
:mod:`~.breakdown` (metrics by user activity / item popularity), :mod:`~.significance` (paired
tests, Holm), :mod:`~.report` (results.md), :mod:`~.plots`, :mod:`~.recbole` (reference rows),
:mod:`~.tune` (Optuna search on validation). Nothing below this package imports it.

Typical use::

    from mmkgrec.experiments.benchmark import BenchmarkSpec, run_benchmark
    run_benchmark(BenchmarkSpec(datasets=["synthetic-tiny"], models=["pop", "bprmf"]), "bench")
"""

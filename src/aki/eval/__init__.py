"""Evaluation of AKI models.

- :mod:`aki.eval.scorers`: offline scorers of the paper's benchmarks (CV-Bench, POPE, MME, MMBench);
- :mod:`aki.eval.benchmarks`: the paper's prompt formats and local benchmark files as examples;
- :mod:`aki.eval.run`: answer (:class:`aki.generation.Runner`), score and write a local benchmark (``aki eval run``);
- :mod:`aki.eval.lmms_eval_model`: the lmms-eval model plugin (``lmms-eval --model aki``; needs lmms-eval);
- :mod:`aki.eval.cli`: the ``aki eval`` commands ``run``, ``score`` and ``compare``.
"""

"""Evaluation: offline scorers for the paper's benchmarks (:mod:`aki.eval.scorers`) and the ``aki eval`` commands."""

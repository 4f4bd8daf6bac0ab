"""The benchmark scripts run with ``--quick``, print their ratio lines and pass their correctness checks.

The scripts run two at a time, one thread each, so the whole module stays around a minute. Timings at
the quick sizes mean nothing; what is checked is that every script finishes, reports each ratio it
promises in the expected format, and that its CHECK lines (MMA paths equal the dense reference, MMA
changes the result) pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # a minute of its own: .ci/run runs it after the default suite

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EXPECTED_RATIOS = {
    "bench_attention.py": [
        "attention fwd L=256 single image: dense-mask SDPA / causal SDPA",
        "attention fwd L=256 single image: flex BlockMask (uncompiled) / causal SDPA",
        "attention fwd L=256 multi image: aki patch / causal SDPA",
        "attention fwd+bwd L=256 multi image: aki patch / causal SDPA",
        "largest allocation MmaLayout.block_mask() (aki), L=512 / L=128 (L x4)",
    ],
    "bench_mask_build.py": [
        "mask build L=256: mma_mask / causal tril",
        "mask build L=256: naive per-sample loops / mma_mask (speed-up)",
        "mask build many images B=2 L=256: mma_mask / causal tril",
    ],
    "bench_many_media.py": [
        "attention fwd L=256 many images: aki_mma_sdpa / causal SDPA",
        "attention fwd+bwd L=256 many images: aki_mma_sdpa / causal SDPA",
        "attention fwd L=256 many images: split on the stand-in / stand-in alone",
        "attention fwd+bwd L=256 many images: split on the stand-in / stand-in alone",
    ],
    "bench_training_stack.py": [
        "Trainer step L=128: MMA / causal",
        "SFTTrainer step L=128: MMA / causal",
        "Trainer step L=128: split on the stand-in kernel / the stand-in alone",
    ],
    "bench_generate.py": [
        "generate one batch: MMA / causal",
        "generate MMA: one prompt at a time / one batch (batching speed-up)",
    ],
    "bench_eval.py": ["eval examples/s: batch 8 / batch 1"],
    "bench_train.py": [
        "MMA step time / causal step time",
        "data loader time / MMA training step time, per sample",
    ],
    "bench_reliability.py": ["2-token latency behind a 900-token request / alone"],
    "bench_serve.py": ["serve throughput: 8 clients / 1 client"],
    "bench_train_step.py": [
        "train step L=128: MMA (aki_mma_sdpa) / causal sdpa",
        "train step L=128: eager + dense MMA mask / causal sdpa",
    ],
}
RATIO_LINE = re.compile(r"RATIO (?P<label>.+): \d+\.\d\dx(  \[target [<>]= \d+\.\d\dx: (PASS|FAIL)\])?")


@pytest.fixture(scope="module")
def quick_runs() -> dict[str, tuple[int, str, str]]:
    """(return code, stdout, stderr) of every script run with ``--quick --threads 1``."""

    def run(script: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--quick", "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout, done.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:  # one process per core
        results = dict(zip(EXPECTED_RATIOS, pool.map(run, EXPECTED_RATIOS), strict=True))
    return results


@pytest.mark.parametrize("script", sorted(EXPECTED_RATIOS))
def test_quick_run_prints_every_ratio_and_passes_its_checks(quick_runs, script):
    returncode, stdout, stderr = quick_runs[script]
    assert returncode == 0, f"{script} exited with {returncode}:\n{stderr[-3000:]}"
    lines = stdout.splitlines()
    ratio_lines = [line for line in lines if line.startswith("RATIO ")]
    malformed = [line for line in ratio_lines if not RATIO_LINE.fullmatch(line)]
    assert not malformed, f"{script} printed malformed ratio lines: {malformed}"
    labels = {RATIO_LINE.fullmatch(line)["label"] for line in ratio_lines}
    missing = [label for label in EXPECTED_RATIOS[script] if label not in labels]
    assert not missing, f"{script} did not report {missing}; it reported {sorted(labels)}"
    checks = [line for line in lines if line.startswith("CHECK ")]
    failed = [line for line in checks if ": FAIL" in line]
    assert checks, f"{script} printed no CHECK lines"
    assert not failed, f"{script} failed its correctness checks: {failed}"

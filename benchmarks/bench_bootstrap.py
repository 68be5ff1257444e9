"""Evaluation's bootstrap: the vectorised `metrics.bootstrap_ci` against the former implementation
(one scikit-learn call per resample, class and metric; kept as the oracle in tests/test_training_metrics.py).

    python benchmarks/bench_bootstrap.py [--n-boot 200]

Prints CPU seconds of each on test sets shaped like the demo's (digits: 360 x 10 single-label;
PadChest-Cl phantoms: 300 x 7 multi-label with unknowns) and a larger NIH-like one (5,000 x 14), their
ratio, and whether the two results are identical (exact float equality).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from xrstudy.training.metrics import bootstrap_ci

ORACLE = Path(__file__).resolve().parents[1] / "tests" / "test_training_metrics.py"


def _oracle():
    spec = importlib.util.spec_from_file_location("metrics_oracle", ORACLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu(fn, *args) -> tuple[float, object]:
    started = time.process_time()
    out = fn(*args)
    return time.process_time() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    oracle = _oracle()
    rng = np.random.default_rng(0)
    cases = {
        "digits-like, 360 x 10 single-label": (*oracle._single_label(rng, 360, 10), False),
        "PadChest-Cl-like, 300 x 7 multi-label": (*oracle._multilabel(rng, 300, 7), True),
        "NIH-like, 5,000 x 14 multi-label": (*oracle._multilabel(rng, 5000, 14, missing=0.0), True),
    }
    for name, (probs, targets, multilabel) in cases.items():
        after, fast = _cpu(bootstrap_ci, probs, targets, multilabel, 0, args.n_boot)
        before, slow = _cpu(oracle._reference_bootstrap_ci, probs, targets, multilabel, 0, args.n_boot)
        print(
            f"{name}: former {before:.2f} s CPU, vectorised {after:.3f} s CPU, {before / after:.0f}x, "
            f"identical: {fast == slow}"
        )


if __name__ == "__main__":
    main()

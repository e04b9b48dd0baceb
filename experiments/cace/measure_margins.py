"""Margins of the CaCE tests: run the tests' small BARS study over seeds and print what they assert.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/cace/measure_margins.py --seeds 0 1 2 3 4 --threads 1

Each line: the quantities tests/test_cace.py checks, for one seed. Run with --threads 1 and 2 (the
tests must hold on any CPU) and keep the asserted thresholds well inside the range printed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from cace_fixtures import bars_study, mean_absolute_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for seed in args.seeds:
        rows = bars_study(seed)
        gt = {key: round(row.gt, 3) for key, row in rows.items()}
        split = {key: tuple(round(v, 3) for v in rows[key].gt_class) for key in ("horizontal_red", "vertical_green")}
        balanced = {level: round(rows[level].estimates["balanced"]["encdec_cace"], 3) for level in (0.0, 0.5, 0.9)}
        shifts = {name: round(rows[0.9].estimates[name]["shape_shift"], 2) for name in ("balanced", "plain")}
        print(f"seed={seed} threads={args.threads} GT={gt} GT by class (asym)={split} EncDec={balanced} "
              f"MAE EncDec={mean_absolute_error(rows, 'encdec_cace'):.3f} "
              f"ConExp={mean_absolute_error(rows, 'conexp'):.3f} "
              f"shape shift at 0.9={shifts}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Margins of the CaCE tests: rerun what they train over seeds and print what they assert.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/cace/measure_margins.py --seeds 0 1 2 3 4 --threads 1
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/cace/measure_margins.py --callback --seeds 7 1 2 3 4

Without ``--callback``: the small BARS study of ``tests/cace_fixtures.py`` (what tests/test_cace.py
checks), one line per seed. With ``--callback``: the confounded training that
tests/test_cace_callback.py watches with :class:`~xai_lightning.callbacks.CaCECallback`, the per-epoch
ground truth for each seed. Run with --threads 1 and 2 (the tests must hold on any CPU; a different
float summation order acts like another seed) and keep the asserted thresholds well inside the
range printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from cace_fixtures import bars_study, mean_absolute_error


def study_margins(seed: int, threads: int) -> None:
    rows = bars_study(seed)
    gt = {key: round(row.gt, 3) for key, row in rows.items()}
    split = {key: tuple(round(v, 3) for v in rows[key].gt_class) for key in ("horizontal_red", "vertical_green")}
    balanced = {level: round(rows[level].estimates["balanced"]["encdec_cace"], 3) for level in (0.0, 0.5, 0.9)}
    shifts = {name: round(rows[0.9].estimates[name]["shape_shift"], 2) for name in ("balanced", "plain")}
    print(
        f"seed={seed} threads={threads} GT={gt} GT by class (asym)={split} EncDec={balanced} "
        f"MAE EncDec={mean_absolute_error(rows, 'encdec_cace'):.3f} "
        f"ConExp={mean_absolute_error(rows, 'conexp'):.3f} "
        f"shape shift at 0.9={shifts}",
        flush=True,
    )


def callback_margins(seed: int, threads: int) -> None:
    from test_cace_callback import EPOCHS, LAYER, PREFIX, train_on_bars

    from xai_lightning import CaCECallback

    callback = CaCECallback(
        concept="colour=green",
        target="vertical",
        num_probe=192,
        tcav_layers=LAYER,
        num_random=10,
        examples_per_concept=20,
        on_error="raise",
    )
    with tempfile.TemporaryDirectory() as root:
        train_on_bars(Path(root), [callback], seed=seed)
    assert len(callback.history) == EPOCHS
    gt = [round(row[f"{PREFIX}/ground_truth"], 3) for row in callback.history]
    conexp = [round(row[f"{PREFIX}/conexp"], 3) for row in callback.history]
    print(f"callback seed={seed} threads={threads} GT per epoch={gt} ConExp per epoch={conexp}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--callback", action="store_true", help="the CaCECallback training instead of the study")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for seed in args.seeds:
        (callback_margins if args.callback else study_margins)(seed, args.threads)


if __name__ == "__main__":
    main(sys.argv[1:])

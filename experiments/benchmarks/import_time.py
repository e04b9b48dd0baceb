"""Import time of xai_lightning against ``import torch``, each in a fresh interpreter (cold module cache
aside, what a user's script pays).

    python experiments/benchmarks/import_time.py --repeats 7

Statements, interleaved (one fresh process per statement per repeat, so load drift on a shared
machine hits all alike); prints the median and range of each and the ratio of medians to
``import torch``:

* ``import torch`` — the reference (issue 16: ``import xai_lightning`` must cost ≤ 1.3× that);
* ``import xai_lightning`` — the lazy root (PEP 562);
* ``import xai_lightning.attribution`` (and ``.concepts``, ``.dissection``, ``.evaluation``,
  ``.uncertainty``, ``.dynamics``) — torch plus the algorithms, no Lightning;
* ``from xai_lightning import GradCAMCallback`` — what adding a callback costs (Lightning included);
* ``import pytorch_lightning`` — for scale.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STATEMENTS = {
    "import torch": "import torch",
    "import xai_lightning": "import xai_lightning",
    "import xai_lightning.attribution": "import xai_lightning.attribution",
    "import xai_lightning.concepts": "import xai_lightning.concepts",
    "import xai_lightning.dissection": "import xai_lightning.dissection",
    "import xai_lightning.evaluation": "import xai_lightning.evaluation",
    "import xai_lightning.uncertainty": "import xai_lightning.uncertainty",
    "import xai_lightning.dynamics": "import xai_lightning.dynamics",
    "from xai_lightning import GradCAMCallback": "from xai_lightning import GradCAMCallback",
    "import pytorch_lightning": "import pytorch_lightning",
}


def seconds(statement: str) -> float:
    """Wall time of a fresh interpreter running ``statement``, minus that of an empty one's start."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds("import torch, pytorch_lightning")  # warm the OS file cache once
    baseline = statistics.median(seconds("pass") for _ in range(3))
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(args.repeats):
        for name, statement in STATEMENTS.items():
            times[name].append(seconds(statement) - baseline)
    reference = statistics.median(times["import torch"])
    print(f"interpreter start {baseline:.3f} s (subtracted); {args.repeats} interleaved repeats")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<45} median {median:6.2f} s  range {min(values):5.2f}-{max(values):5.2f}  "
            f"ratio to import torch {median / reference:5.2f}"
        )


if __name__ == "__main__":
    main()

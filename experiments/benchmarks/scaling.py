"""Memory of network dissection and TCAV as the probe set grows (the README's "Scaling" curves).

For each probe count, a fresh subprocess builds the probe set, warms up, and measures the peak
resident memory *added* while the algorithm runs (sampled every millisecond; glibc's mmap
threshold pinned so that freed blocks go back to the system — see ``dissection.py``):

* dissection of ``features.20`` of SmallCNN(width 16) with ``method="exact"`` (keeps the layer's
  activations: grows linearly by design) and ``method="sketch"`` (never more than exact; flat
  once the activations outgrow the sketch), plus the sketch's state bytes by construction;
* TCAV of ``features.13`` (3 concepts × 10 random sets × 50 examples) scoring ``N`` probe images:
  the CAVs' activations do not depend on ``N`` and the probe is scored in streamed slices of
  ``max_batch`` (256), so memory is flat in ``N``.

    PYTHONPATH=. python experiments/benchmarks/scaling.py [--dissection 100 300 1000 3000 10000]
        [--tcav 100 300 1000 3000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import warnings

import torch
from dissection import BATCH, LIVE_MEMORY_ENV, PeakResidentMemory, model, probe

warnings.filterwarnings("ignore")
LAYER = "features.20"


def _trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def dissection_child(count: int, method: str) -> dict:
    from xai_lightning.dissection import dissect

    images, labels, vocabulary = probe(count)
    network = model()
    dissect(network, LAYER, images[:BATCH], labels.select(slice(0, BATCH)), vocabulary, method=method)
    _trim()
    with PeakResidentMemory() as memory:
        dissect(network, LAYER, images, labels, vocabulary, method=method, max_batch=BATCH)
    return {"added_mib": (memory.peak - memory.start) / 1024}


def tcav_child(count: int) -> dict:
    from xai_lightning import ConceptWorld
    from xai_lightning.concepts import TCAV, concept_examples_from_world

    world = ConceptWorld(max(count, 1000) + 1000, seed=1, label_by="texture")
    concepts = {name: concept_examples_from_world(world, name, 150) for name in ("striped", "dotted", "red")}
    pool, inputs, labels = world.images[-1000:], world.images[:count], world.labels[:count]
    network = model()
    tcav = TCAV(layers=["features.13"], num_random=10, examples_per_concept=50)
    tcav.attribute(network, inputs[:8], labels[:8], concepts, random_pool=pool)  # warm-up
    _trim()
    with PeakResidentMemory() as memory:
        tcav.attribute(network, inputs, labels, concepts, random_pool=pool)
    return {"added_mib": (memory.peak - memory.start) / 1024}


def child(kind: str, count: int, method: str) -> dict:
    return dissection_child(count, method) if kind == "dissection" else tcav_child(count)


def measure(kind: str, count: int, method: str = "") -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(count), method or "-"],
        check=True,
        capture_output=True,
        text=True,
        env=LIVE_MEMORY_ENV,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["added_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dissection", type=int, nargs="*", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--tcav", type=int, nargs="*", default=[100, 300, 1000, 3000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, count, method = args.child
        print(json.dumps(child(kind, int(count), method)))
        return
    torch.set_num_threads(1)
    from xai_lightning.dissection import QuantileSketch

    units = model().features[18].out_channels
    print(
        f"dissection of {LAYER} (SmallCNN width 16: {units} units, 8 × 8), batch {BATCH}; peak resident memory "
        "added (MiB)"
    )
    print("| probe images | exact | sketch | sketch / exact | exact's activations (MiB) |")
    print("|---|---|---|---|---|")
    for count in args.dissection:
        exact, sketch = measure("dissection", count, "exact"), measure("dissection", count, "sketch")
        kept = count * units * 64 * 4 / 2**20
        print(f"| {count} | {exact:.1f} | {sketch:.1f} | {sketch / max(exact, 1e-9):.2f} | {kept:.1f} |", flush=True)
    print(f"(the sketch's bucket counts: {QuantileSketch.memory_bytes(units) / 2**20:.1f} MiB by construction)")
    print()
    print(
        "TCAV of features.13 (3 concepts x 10 random sets x 50 examples), scoring N probe images; peak resident "
        "memory added (MiB)"
    )
    print("| probe images | TCAV |")
    print("|---|---|")
    for count in args.tcav:
        print(f"| {count} | {measure('tcav', count):.1f} |", flush=True)


if __name__ == "__main__":
    main()

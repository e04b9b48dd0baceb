"""Cost of network dissection: time against a bare forward pass, and peak memory against probe size.

1. Time: dissecting a layer of SmallCNN (width 16) over 2,000 ConceptWorld probe images
   (19 concepts in 5 categories) divided by the time of a bare forward pass of the whole model
   over the same images, same batch size, same process, alternating over several repeats
   (medians). Both exact (one pass) and sketch (two passes) thresholds. The probe set's concept
   labels are built once and reused, as DissectionCallback does every epoch (their per-image
   concept pixel counts, about 30 ms here, are computed at the first call).
2. Memory: peak resident memory *added* by ``dissect`` (the probe tensors themselves excluded)
   at 500 and at 5,000 probe images, each size in a fresh subprocess (Linux: resident memory
   sampled every millisecond while dissecting). The subprocesses run with glibc's dynamic mmap
   threshold pinned (``MALLOC_MMAP_THRESHOLD_``), so that freed blocks go back to the system and
   resident memory tracks what is alive rather than what the allocator keeps for reuse (±20 MiB
   of noise otherwise).

    python experiments/benchmarks/dissection.py [--repeats 3] [--layer features.20]

Targets (issue 5): ratio <= 1.5; peak memory flat in the number of images. The exact method
(one pass) is the one timed against 1.5; the sketch method (two passes, so about 2x) is the one
whose memory is flat — DissectionCallback's ``threshold_method="auto"`` takes exact while the
kept activations fit in ``max_kept_mib`` and the sketch beyond.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

from xai_lightning import ConceptWorld, SmallCNN
from xai_lightning.dissection import ConceptLabels, dissect, vocabulary_from_dataset

warnings.filterwarnings("ignore")
BATCH = 128
LIVE_MEMORY_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def probe(num_images: int) -> tuple[torch.Tensor, ConceptLabels, object]:
    world = ConceptWorld(num_images, seed=1)
    vocabulary, channels = vocabulary_from_dataset(world)
    parts = [
        ConceptLabels.from_masks(
            world.masks(torch.arange(start, min(start + 500, num_images)))[:, channels], vocabulary
        )
        for start in range(0, num_images, 500)
    ]
    return world.images, ConceptLabels.cat(parts), vocabulary


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, width=16).eval()


def bare_forward(network: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        for start in range(0, images.shape[0], BATCH):
            network(images[start : start + BATCH])


def timing(repeats: int, layer: str) -> None:
    images, labels, vocabulary = probe(2000)
    network = model()
    times: dict[str, list[float]] = {"forward": [], "exact": [], "sketch": []}
    for _ in range(repeats):
        for name in times:
            start = time.perf_counter()
            if name == "forward":
                bare_forward(network, images)
            else:
                dissect(network, layer, images, labels, vocabulary, method=name, max_batch=BATCH)
            times[name].append(time.perf_counter() - start)
    forward = statistics.median(times["forward"])
    print(f"2,000 probe images, layer {layer}, batch {BATCH}, torch threads {torch.get_num_threads()}")
    print(f"  bare forward            {forward:7.3f} s")
    notes = {"exact": "one pass (target <= 1.5)", "sketch": "two passes, fixed memory"}
    for name in ("exact", "sketch"):
        seconds = statistics.median(times[name])
        print(f"  dissection ({name:6s})    {seconds:7.3f} s   ratio {seconds / forward:5.2f}  {notes[name]}")


def _kilobytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


class PeakResidentMemory:
    """Peak resident memory (KiB) while the block runs, sampled every millisecond from
    /proc/self/status. Resetting the kernel's own peak counter (clear_refs) is not honoured on
    every kernel (it silently kept an earlier, larger peak here), so the peak is sampled."""

    def __enter__(self) -> "PeakResidentMemory":
        import threading

        self.start = self.peak = _kilobytes("VmRSS")
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, _kilobytes("VmRSS"))
                self._stop.wait(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _kilobytes("VmRSS"))


def memory_child(num_images: int, layer: str, method: str) -> None:
    images, labels, vocabulary = probe(num_images)
    network = model()
    dissect(network, layer, images[:BATCH], labels.select(slice(0, BATCH)), vocabulary, method=method)  # warm up
    # Hand memory freed while building the probe back to the kernel, so that reusing it does not
    # hide what dissecting allocates.
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with PeakResidentMemory() as memory:
        dissect(network, layer, images, labels, vocabulary, method=method, max_batch=BATCH)
    print(json.dumps({"added_mib": (memory.peak - memory.start) / 1024}))


def memory(layer: str) -> None:
    print(f"peak memory added by dissect (layer {layer}; probe tensors excluded)")
    for method in ("exact", "sketch"):
        added = {}
        for n in (500, 5000):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--layer", layer, "--method", method],
                check=True,
                capture_output=True,
                text=True,
                env=LIVE_MEMORY_ENV,
            ).stdout
            added[n] = json.loads(out.strip().splitlines()[-1])["added_mib"]
        note = "(flat = 1)" if method == "sketch" else "(keeps N x K x h x w float32 by design)"
        print(
            f"  {method:6s}: 500 images {added[500]:7.1f} MiB   5,000 images {added[5000]:7.1f} MiB   "
            f"ratio {added[5000] / max(added[500], 1e-9):5.2f}  {note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", default="features.20")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="exact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child, args.layer, args.method)
        return
    timing(args.repeats, args.layer)
    memory(args.layer)


if __name__ == "__main__":
    main()

"""Our TCAV vs Captum's — at Captum's default and at its best settings — same model, data and workload.

Workload (the issue's): 2 layers × 3 concepts × 10 random sets × 50 examples per set, TCAV for
one class over 100 inputs, with significance (concept vs random-vs-random t-tests). Captum trains
one scikit-learn SGD classifier per (experimental set, layer) and writes activations to disk, as
it does; we train every CAV of both layers in one batched solve and differentiate the logit once.

Captum reads concept images through the DataLoaders it is given. **Default**: batches of 64 in
NCHW (``captum.concept._utils.data_iterator.dataset_to_dataloader``'s batch size). **Best**: the
fastest of batch sizes {64, 256, 1000} × layouts {NCHW, channels-last}, found in a first pass.
Times are medians of ``--repeats`` interleaved runs (ours, default, best, ...) with the range of
the per-repeat ratios.

    PYTHONPATH=. python experiments/benchmarks/tcav_vs_captum.py [--repeats 3] [--threads 1] [--clock cpu]

Target (issue 9): ours / Captum ≤ 0.2.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch
from scipy import stats
from torch.utils.data import DataLoader

from xai_lightning import ConceptWorld, ImageClassifier, SmallCNN
from xai_lightning.concepts import TCAV, concept_examples_from_world, draw_random_sets

LAYERS = ["network.features.13", "network.features.20"]
CONCEPTS = ("striped", "dotted", "red")
NUM_RANDOM, EXAMPLES, TARGET = 10, 50, 1


def workload():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(num_classes=3, width=16)).eval()
    world = ConceptWorld(2000, seed=1, label_by="texture")
    concepts = {name: concept_examples_from_world(world, name, EXAMPLES) for name in CONCEPTS}
    pool = world.images[1000:]
    inputs = world.images[:1000][world.labels[:1000] == TARGET][:100]
    return model, concepts, pool, inputs


def run_ours(model, concepts, pool, inputs):
    tcav = TCAV(layers=LAYERS, num_random=NUM_RANDOM, examples_per_concept=EXAMPLES, classifier="hinge")
    result = tcav.attribute(
        model, inputs, torch.full((len(inputs),), TARGET), concepts, random_pool=pool, classes=[TARGET]
    )
    return result.p_values


def run_captum(model, concepts, pool, inputs, batch_size: int = 64, layout=torch.contiguous_format):
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept

    random_index = draw_random_sets(pool, NUM_RANDOM + 1, EXAMPLES, seed=0)
    ids = iter(range(1000))

    def loader(images):
        return DataLoader(images.contiguous(memory_format=layout), batch_size=batch_size)

    concept_objects = [Concept(next(ids), name, loader(images)) for name, images in concepts.items()]
    randoms = [Concept(next(ids), f"random{r}", loader(pool[rows])) for r, rows in enumerate(random_index)]
    sets = [[c, r] for c in concept_objects for r in randoms[1:]] + [[randoms[0], r] for r in randoms[1:]]
    with tempfile.TemporaryDirectory() as save_path, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = CaptumTCAV(model, LAYERS, model_id="bench", save_path=save_path)
        scores = captum.interpret(inputs.contiguous(memory_format=layout), sets, target=TARGET)
    p_values = {}
    for layer in LAYERS:
        null = [float(scores[f"{randoms[0].id}-{r.id}"][layer]["sign_count"][0]) for r in randoms[1:]]
        for c in concept_objects:
            ours = [float(scores[f"{c.id}-{r.id}"][layer]["sign_count"][0]) for r in randoms[1:]]
            p_values[(layer, c.name)] = stats.ttest_ind(ours, null).pvalue
    return p_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    model, concepts, pool, inputs = workload()

    def seconds(function) -> float:
        start = clock()
        function()
        return clock() - start

    settings = {
        (size, layout): (lambda size=size, layout=layout: run_captum(model, concepts, pool, inputs, size, layout))
        for size in (64, 256, 1000)
        for layout in (torch.contiguous_format, torch.channels_last)
    }
    first = {key: seconds(function) for key, function in settings.items()}
    best = min(first, key=first.get)
    runs = {
        "ours": lambda: run_ours(model, concepts, pool, inputs),
        "default": settings[(64, torch.contiguous_format)],
        "best": settings[best],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, function in runs.items():
            times[name].append(seconds(function))
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; {torch.get_num_threads()} "
        f"torch thread(s); load average {load:.1f}; clock: {args.clock}"
    )
    print(
        f"workload: {len(LAYERS)} layers x {len(CONCEPTS)} concepts x {NUM_RANDOM} random sets x {EXAMPLES} "
        f"examples, {len(inputs)} inputs, with significance; median of {args.repeats} interleaved repeats"
    )
    layout_name = "channels-last" if best[1] == torch.channels_last else "NCHW"
    print("| ours (s) | Captum default (s) | Captum best (s) | best setting | ours / default | ours / best | target |")
    print("|---|---|---|---|---|---|---|")
    med = {name: statistics.median(values) for name, values in times.items()}

    def ratio(other: str) -> str:
        per = [a / b for a, b in zip(times["ours"], times[other])]
        return f"{med['ours'] / med[other]:.3f} ({min(per):.3f}-{max(per):.3f})"

    print(
        f"| {med['ours']:.2f} | {med['default']:.2f} | {med['best']:.2f} | batch {best[0]}, {layout_name} | "
        f"{ratio('default')} | {ratio('best')} | ≤ 0.2 |"
    )


if __name__ == "__main__":
    main()

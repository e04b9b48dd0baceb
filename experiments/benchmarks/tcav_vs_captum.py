"""Our TCAV vs Captum's, same model, data and workload, timed in one process.

Workload (the issue's): 2 layers × 3 concepts × 10 random sets × 50 examples per set, TCAV for
one class over 100 inputs, with significance (concept vs random-vs-random t-tests). Captum trains
one scikit-learn SGD classifier per (experimental set, layer) and writes activations to disk, as
it does; we train every CAV of both layers in one batched solve and differentiate the logit once.

    PYTHONPATH=. python experiments/benchmarks/tcav_vs_captum.py [--repeats 2] [--threads 1]

Prints both times and the ratio ours / Captum (target ≤ 0.2).
"""

from __future__ import annotations

import argparse
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
    result = tcav.attribute(model, inputs, torch.full((len(inputs),), TARGET), concepts, random_pool=pool,
                            classes=[TARGET])
    return result.p_values


def run_captum(model, concepts, pool, inputs):
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept

    random_index = draw_random_sets(pool, NUM_RANDOM + 1, EXAMPLES, seed=0)
    ids = iter(range(1000))
    concept_objects = [Concept(next(ids), name, DataLoader(images, batch_size=64)) for name, images in concepts.items()]
    randoms = [Concept(next(ids), f"random{r}", DataLoader(pool[rows], batch_size=64)) for r, rows in enumerate(random_index)]
    sets = [[c, r] for c in concept_objects for r in randoms[1:]] + [[randoms[0], r] for r in randoms[1:]]
    with tempfile.TemporaryDirectory() as save_path, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = CaptumTCAV(model, LAYERS, model_id="bench", save_path=save_path)
        scores = captum.interpret(inputs, sets, target=TARGET)
    p_values = {}
    for layer in LAYERS:
        null = [float(scores[f"{randoms[0].id}-{r.id}"][layer]["sign_count"][0]) for r in randoms[1:]]
        for c in concept_objects:
            ours = [float(scores[f"{c.id}-{r.id}"][layer]["sign_count"][0]) for r in randoms[1:]]
            p_values[(layer, c.name)] = stats.ttest_ind(ours, null).pvalue
    return p_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, concepts, pool, inputs = workload()
    timings = {"ours": [], "captum": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", run_ours), ("captum", run_captum)):
            start = time.perf_counter()
            fn(model, concepts, pool, inputs)
            timings[name].append(time.perf_counter() - start)
    ours, captum = min(timings["ours"]), min(timings["captum"])
    print(f"workload: {len(LAYERS)} layers x {len(CONCEPTS)} concepts x {NUM_RANDOM} random sets x {EXAMPLES} examples, "
          f"{len(inputs)} inputs, with significance; torch threads {torch.get_num_threads()}")
    print(f"ours   {ours:7.2f} s  (best of {args.repeats})")
    print(f"captum {captum:7.2f} s  (best of {args.repeats})")
    print(f"ratio ours/captum = {ours / captum:.3f}  (target <= 0.2)")


if __name__ == "__main__":
    main()

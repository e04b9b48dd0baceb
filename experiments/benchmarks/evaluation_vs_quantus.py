"""Speed of our explanation metrics against Quantus 0.6.0 on the same model, inputs and settings.

Deletion (Quantus' ``PixelFlipping``), faithfulness correlation and the model-parameter
randomisation test (cascading, Spearman of absolute maps, gradient maps) on SmallCNN (width 16)
and 64 × 3 × 32 × 32 ConceptWorld images. Both sides get maps shaped like the inputs (Quantus ranks
input elements), the same number of steps / draws / layers, logits or probabilities alike.
Quantus is run at its best ``batch_size`` (swept once per metric, fastest kept); ours at its
defaults. Rounds interleave the two implementations so that load drift on a shared machine hits
both alike; printed: median time per call and ours/Quantus ratio, median and range over rounds.

    PYTHONPATH=. python experiments/benchmarks/evaluation_vs_quantus.py [--rounds 5] [--threads 1]

Goal (issue 15): ratio <= 0.2 for each metric. Both implementations run the same forward (and,
for MPRT, backward) passes; the "model floor" line times those passes alone, on prebuilt inputs
in batches of 256, so the gap left to either implementation is its own overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from xai_lightning import ConceptWorld, SmallCNN
from xai_lightning.attribution import Saliency
from xai_lightning.core import isolated_rng
from xai_lightning.evaluation import faithfulness_correlation, perturbation_curve
from xai_lightning.evaluation.sanity import model_parameter_randomisation

warnings.filterwarnings("ignore")


def trained_model(seed: int = 0) -> torch.nn.Module:
    """SmallCNN (width 16) trained briefly on ConceptWorld, so that scores and maps carry signal."""
    torch.manual_seed(seed)
    world = ConceptWorld(1000, seed=seed)
    images, labels = world.tensors()
    model = SmallCNN(num_classes=5, width=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, len(images), 64):
            loss = torch.nn.functional.cross_entropy(model(images[start : start + 64]), labels[start : start + 64])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def quantus_call(metric, model, x, y, a, batch_size: int, **kwargs):
    with isolated_rng():
        return metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            device="cpu",
            batch_size=batch_size,
            **kwargs,
        )


def fastest_batch_size(make_call: Callable[[int], Callable[[], object]], sizes: list[int]) -> tuple[int, float]:
    """Quantus' best batch size: one timed call per size (after a warm-up), the fastest kept."""
    timings = {}
    for size in sizes:
        call = make_call(size)
        call()
        start = time.perf_counter()
        call()
        timings[size] = time.perf_counter() - start
    best = min(timings, key=timings.get)
    return best, timings[best]


def interleaved_rounds(functions: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall time (s) of each function in every round, the functions alternating within a round."""
    for function in functions.values():
        function()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    import quantus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = trained_model()
    x, y = ConceptWorld(args.images, seed=11).tensors()
    maps = Saliency(abs=False).attribute(model, x, y)  # (B, 3, 32, 32): Quantus ranks input elements
    sizes = [16, 64, 256]

    features_in_step = 64  # must divide H·W for Quantus; 3072 / 64 = 48 steps
    steps = maps[0].numel() // features_in_step
    draws, subset = 50, 102

    def our_deletion():
        return perturbation_curve(model, x, maps, y, steps=steps, baseline="zero", score="probability")

    def quantus_deletion(size):
        metric = quantus.PixelFlipping(
            features_in_step=features_in_step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
        )
        return lambda: quantus_call(metric, model, x, y, maps, size, softmax=True)

    def our_correlation():
        return faithfulness_correlation(model, x, maps, y, draws=draws, subset_size=subset, baseline="zero")

    def quantus_correlation(size):
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=draws,
            subset_size=subset,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            return_aggregate=False,
            disable_warnings=True,
        )
        return lambda: quantus_call(metric, model, x, y, maps, size)

    gradient_maps = Saliency().to_map(Saliency().attribute(model, x, y))

    def our_mprt():
        return model_parameter_randomisation(
            model, x, y, Saliency(), mode="cascading", similarities=["spearman_abs"], seed=43, original=gradient_maps
        )

    def quantus_mprt(size):
        metric = quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True, disable_warnings=True)
        return lambda: quantus_call(
            metric,
            model,
            x,
            y,
            gradient_maps.unsqueeze(1),
            size,
            explain_func=quantus.explain,
            explain_func_kwargs={"method": "Saliency"},
        )

    def forward_floor(rows: int) -> Callable[[], object]:
        inputs = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows].contiguous(memory_format=torch.channels_last)

        def passes():
            with torch.no_grad():
                for start in range(0, rows, 256):
                    model(inputs[start : start + 256])

        return passes

    def gradient_floor(rows: int) -> Callable[[], object]:
        inputs = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows]

        def passes():
            for start in range(0, rows, 256):
                batch = inputs[start : start + 256].clone().requires_grad_(True)
                torch.autograd.grad(model(batch)[:, 0].sum(), batch)

        return passes

    floors = {
        "deletion / pixel flipping": forward_floor(len(x) * (steps + 1)),
        "faithfulness correlation": forward_floor(len(x) * (draws + 1)),
        "MPRT (cascading)": gradient_floor(len(x) * 13),
    }
    print(f"SmallCNN width 16, {args.images} x 3 x 32 x 32 images, {args.threads} thread(s), {args.rounds} rounds")
    print(
        f"settings: deletion {steps} steps of {features_in_step} elements (probability); faithfulness correlation "
        f"{draws} draws of {subset} elements (logit); MPRT cascading over 13 layers, gradient maps, Spearman |.|"
    )
    for label, ours, theirs in (
        ("deletion / pixel flipping", our_deletion, quantus_deletion),
        ("faithfulness correlation", our_correlation, quantus_correlation),
        ("MPRT (cascading)", our_mprt, quantus_mprt),
    ):
        size, _ = fastest_batch_size(theirs, sizes)
        times = interleaved_rounds({"ours": ours, "quantus": theirs(size), "floor": floors[label]}, args.rounds)
        ratios = [a / b for a, b in zip(times["ours"], times["quantus"])]
        print(
            f"{label:>28}: ours {statistics.median(times['ours']):.3f} s, Quantus (batch_size={size}) "
            f"{statistics.median(times['quantus']):.3f} s, model floor {statistics.median(times['floor']):.3f} s; "
            f"ours/Quantus median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}), "
            f"floor/Quantus {statistics.median(times['floor']) / statistics.median(times['quantus']):.3f}"
            "   goal <= 0.2",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Speed of the sampling methods: batched MC dropout, and one training step of a vectorised ensemble.

1. MC dropout, T = 20 passes over 256 probe images (SmallCNN, width 32, dropout 0.3 before the
   classifier): ``mc_dropout_logits`` — by default the layers before the dropout run once and only
   their output is repeated 20 times; also with the input repeated (``share_prefix=False``: one
   forward of 20 × 256 rows, or chunks of ``max_batch`` rows) — against the reference, 20 plain
   eval forwards of the 256 images (what a Python loop of train-mode dropout passes costs).
   Target (issue 18): ratio ≤ 1.2.
2. Deep ensemble, K = 5 SmallCNNs: one training step (forward, backward, Adam) of
   ``VectorisedEnsemble`` in both layouts — ``packed`` (one wide network: grouped convolutions,
   per-channel batch norm, batched matrix products; the automatic choice for SmallCNN) and ``vmap``
   (``torch.func.vmap`` over stacked weights) — against five separate modules stepped one after the
   other (each with its own Adam), on the same batch, for several network widths and batch sizes.
   The reference has no batching parameter; its settings swept are the memory format (NCHW and
   channels-last inputs and weights; the ratio uses its faster one) with foreach Adam (the default).
   (The packed layout itself runs its CPU convolutions channels-last.) Target: ratio ≤ 0.5.

Timings are medians of interleaved repeats in one process (see ``timing.py``), with the range:

    PYTHONPATH=. python experiments/benchmarks/uncertainty.py [--repeats 5] [--threads 1]

On a shared machine, re-measure on a quiet one before quoting the numbers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from xai_lightning.models import SmallCNN
from xai_lightning.uncertainty import VectorisedEnsemble, mc_dropout_logits


def spread(functions: dict, repeats: int) -> dict[str, tuple[float, float, float]]:
    """``{name: (median, min, max)}`` seconds over interleaved repeats (one warm-up call each first) — as
    ``timing.timed_interleaved``, which reports medians only, plus the range."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def mc_dropout_benchmark(repeats: int, passes: int = 20, probes: int = 256) -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=32, dropout=0.3).eval()
    x = torch.rand(probes, 3, 32, 32)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([model(x) for _ in range(passes)])

    functions = {
        "20 plain eval forwards": plain,
        "mc_dropout_logits (one forward)": lambda: mc_dropout_logits(model, x, passes=passes),
        "  same, max_batch=1024": lambda: mc_dropout_logits(model, x, passes=passes, max_batch=1024),
        "  input repeated (share_prefix=False)": lambda: mc_dropout_logits(model, x, passes=passes, share_prefix=False),
        "  input repeated, max_batch=1024": lambda: mc_dropout_logits(
            model, x, passes=passes, share_prefix=False, max_batch=1024
        ),
    }
    # What is timed computes what it should: T passes, and the chunked passes equal the one-forward passes.
    one_forward = functions["mc_dropout_logits (one forward)"]()
    assert one_forward.shape == (passes, probes, 5)
    assert torch.allclose(functions["  input repeated (share_prefix=False)"](), one_forward, atol=1e-4)
    results = spread(functions, repeats)
    reference = results["20 plain eval forwards"][0]
    print(f"\nMC dropout, T={passes}, {probes} probes, SmallCNN width 32 (median [min, max] of {repeats}):")
    for name, (median, low, high) in results.items():
        print(
            f"  {name:<40} {median * 1e3:8.1f} ms [{low * 1e3:.1f}, {high * 1e3:.1f}]  ratio {median / reference:.2f}",
            flush=True,
        )


def ensemble_steps(members: int, width: int, size: int, batch: int) -> dict:
    """One training step of K members: both ensemble layouts and K separate modules (same weights, batch)."""
    torch.manual_seed(0)
    separate = [SmallCNN(num_classes=5, width=width).train() for _ in range(members)]
    separate_last = [copy.deepcopy(member).to(memory_format=torch.channels_last) for member in separate]
    ensembles = {layout: VectorisedEnsemble(separate, layout=layout).train() for layout in ("packed", "vmap")}
    assert ensembles["packed"].layout == "packed"
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 5, (batch,))
    x_last = x.contiguous(memory_format=torch.channels_last)

    def vectorised(ensemble: VectorisedEnsemble, inputs: torch.Tensor) -> Callable[[], None]:
        optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)

        def step() -> None:
            logits = ensemble(inputs)
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(members), reduction="none")
            optimizer.zero_grad(set_to_none=True)
            losses.view(members, -1).mean(1).sum().backward()
            optimizer.step()

        return step

    def loop(modules: list[torch.nn.Module], inputs: torch.Tensor) -> Callable[[], None]:
        optimizers = [torch.optim.Adam(member.parameters(), lr=1e-3) for member in modules]

        def step() -> None:
            for member, optimizer in zip(modules, optimizers):
                loss = F.cross_entropy(member(inputs), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        return step

    # What is timed computes the same thing: both layouts give every member's own logits.
    with torch.no_grad():
        expected = torch.stack([member(x) for member in separate])
        for ensemble in ensembles.values():
            assert torch.allclose(ensemble(x), expected, atol=1e-4)
    return {
        "packed": vectorised(ensembles["packed"], x),
        "vmap": vectorised(ensembles["vmap"], x),
        "separate": loop(separate, x),
        "separate, channels-last": loop(separate_last, x_last),
    }


def ensemble_benchmark(repeats: int, members: int, configurations: list[tuple[int, int, int]]) -> None:
    print(
        f"\nEnsemble of K={members} SmallCNNs, one training step (forward + backward + Adam), median ms "
        f"[min-max] of {repeats}; ratios against the faster separate reference:"
    )
    for width, size, batch in configurations:
        results = spread(ensemble_steps(members, width, size, batch), repeats)
        reference = min(results["separate"][0], results["separate, channels-last"][0])
        print(f"  width {width}, {size}x{size} images, batch {batch}:")
        for name, (median, low, high) in results.items():
            print(
                f"    {name:<23} {median * 1e3:8.1f} ms [{low * 1e3:.0f}-{high * 1e3:.0f}]  "
                f"ratio {median / reference:.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--ensemble-only", action="store_true", help="skip the MC dropout section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.ensemble_only:
        mc_dropout_benchmark(args.repeats)
    ensemble_benchmark(
        args.repeats, args.members, [(4, 16, 32), (8, 16, 32), (4, 32, 64), (8, 32, 64), (16, 32, 64), (32, 32, 64)]
    )


if __name__ == "__main__":
    main()

"""GPU readiness: our attribution methods against Captum's, and the callbacks' epoch overhead, on CUDA.

    PYTHONPATH=. python experiments/benchmarks/gpu.py [--repeats 7] [--callback-repeats 3]
        [--models smallcnn smallcnn128] [--methods saliency ...] [--images-128 8]
        [--callbacks gradcam attribution ...] [--dynamics frequency ...] [--sections attribution callbacks dynamics]
    PYTHONPATH=. python experiments/benchmarks/gpu.py --device cpu --quick   # smoke mode: checks the script runs

Prints ready-to-paste Markdown tables under one machine line (GPU, memory, torch / CUDA / cuDNN /
Captum versions, whether convolutions may use TF32 — both sides run under the same setting):

1. **Attributions vs Captum** (``attribution``): the models, inputs, method settings and Captum's
   best-settings sweep of ``attribution_vs_captum.py`` (imported, not copied), on the device:
   ``smallcnn`` — SmallCNN(width=16), 64 × 3 × 32 × 32; ``smallcnn128`` — the same network on
   128 × 128 images (``--images-128`` of them, 8 by default as in the CPU table). Per method: one
   warm-up run each, then ``--repeats`` interleaved timed runs (ours, Captum default, Captum best, …)
   with ``torch.cuda.synchronize()`` before and after each; medians, ours / default and ours / best
   with the range of the per-repeat ratios; then one more run each for its peak memory
   (``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``, MiB above what was allocated
   before the run: the shared model and inputs are not counted). Ours runs at its defaults: on CUDA
   ``max_batch=None`` becomes the memory-aware cap, printed per model.
2. **Callback epoch overhead** (``callbacks``): ``callback_overhead.py``'s measurement on the device
   (one epoch of SmallCNN(width=32) on 2,000 ConceptWorld images, bare and with each callback alone,
   interleaved; the stopwatch synchronises the device at both ends) and its ratio table.
3. **Training-dynamics callbacks** (``dynamics``): ``dynamics_overhead.py``'s measurement on the
   device (4 epochs per fit) and its table.

Without CUDA, ``--device cuda`` (the default) exits with code 2 and says so; ``--device cpu --quick``
runs every section at tiny sizes (a few images, one repeat, two callbacks) only to check the script
works — its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import attribution_vs_captum as vs_captum  # this folder is on sys.path when run as a script
import callback_overhead
import dynamics_overhead
import torch
from timing import peak_memory_mib

from xai_lightning.attribution.explained_model import ExplainedModel

MODELS = ("smallcnn", "smallcnn128")
SECTIONS = ("attribution", "callbacks", "dynamics")
QUICK_IMAGES = {"smallcnn": 2, "smallcnn128": 1}
QUICK_CALLBACKS = ["gradcam", "attribution"]
QUICK_DYNAMICS = ["frequency"]
NO_CUDA = (
    "gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
    "or use --device cpu --quick for a smoke run of the script\n"
)


def machine_line(device: torch.device) -> str:
    import captum

    versions = f"torch {torch.__version__}; captum {captum.__version__}"
    if device.type != "cuda":
        return f"machine: CPU ({torch.get_num_threads()} torch threads, smoke mode); {versions}"
    properties = torch.cuda.get_device_properties(device)
    return (
        f"machine: {properties.name} ({properties.total_memory / 2**30:.0f} GiB); {versions}; "
        f"CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}; "
        f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
        f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
    )


def mib(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f}"  # NaN off CUDA


def attribution_table(
    model_name: str, methods: list[str], repeats: int, device: torch.device, num_images: int | None
) -> None:
    w = vs_captum.workload(model_name, device, num_images)
    cap = ExplainedModel(w.model, like=w.images).max_batch
    print(
        f"\n{model_name}: inputs {tuple(w.images.shape)} on {device.type}; ours' max_batch=None became {cap}; "
        f"median of {repeats} interleaved synchronised repeats, ratio ranges over the repeats; time in ms, "
        "peak memory in MiB above the resident model and inputs"
    )
    print(
        "| method | ours | Captum default | Captum best | best setting | ours / default | ours / best | target "
        "| peak MiB ours | peak MiB Captum default | peak MiB Captum best | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        try:
            found = vs_captum.compare(method, w, repeats)
            peaks = {name: peak_memory_mib(run, device) for name, run in found["runs"].items()}
        except torch.cuda.OutOfMemoryError as error:  # one setting too big for this GPU: say so, go on
            torch.cuda.empty_cache()
            print(f"| {method} | out of memory: {str(error).splitlines()[0]} |" + " |" * 10, flush=True)
            continue
        times = found["times"]
        ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
        print(
            f"| {method} | {ms['ours']:.1f} | {ms['default']:.1f} | {ms['best']:.1f} | {found['best']} | "
            f"{vs_captum.ratio_text(times['ours'], times['default'])} | "
            f"{vs_captum.ratio_text(times['ours'], times['best'])} | ≤ {vs_captum.TARGETS[method]} | "
            f"{mib(peaks['ours'])} | {mib(peaks['default'])} | {mib(peaks['best'])} | {found['difference']:.1e} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke mode, with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: checks the script runs")
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="*", default=list(vs_captum.METHODS), choices=list(vs_captum.METHODS))
    parser.add_argument("--images-128", type=int, default=None, help="images of the 128 px workload (default 8)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per attribution method")
    parser.add_argument("--callbacks", nargs="*", default=None, choices=list(callback_overhead.TARGETS))
    parser.add_argument("--dynamics", nargs="*", default=None, choices=sorted(dynamics_overhead.FACTORIES))
    parser.add_argument("--callback-repeats", type=int, default=3, help="interleaved repeats of the training runs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, NO_CUDA)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    quick = args.quick
    callbacks = args.callbacks or (QUICK_CALLBACKS if quick else list(callback_overhead.TARGETS))
    dynamics = args.dynamics or (QUICK_DYNAMICS if quick else sorted(dynamics_overhead.FACTORIES))
    repeats, callback_repeats = (1, 1) if quick else (args.repeats, args.callback_repeats)
    num_train, width = (128, 8) if quick else (2000, 32)

    print(machine_line(device) + (" — QUICK SMOKE RUN: the figures mean nothing" if quick else ""), flush=True)
    if "attribution" in args.sections:
        print("\n## Attribution methods vs Captum (default and best settings)")
        for model_name in args.models:
            images = QUICK_IMAGES[model_name] if quick else (args.images_128 if model_name == "smallcnn128" else None)
            attribution_table(model_name, args.methods, repeats, device, images)
    if "callbacks" in args.sections:
        print("\n## Callback epoch overhead", flush=True)
        epochs, inside = callback_overhead.measure(callbacks, callback_repeats, num_train, width, device.type)
        callback_overhead.print_table(epochs, inside, callbacks, callback_repeats, num_train, width)
    if "dynamics" in args.sections:
        print("\n## Training-dynamics callbacks, epoch overhead", flush=True)
        epochs_per_fit = 3 if quick else 4
        found = dynamics_overhead.measure(dynamics, callback_repeats, epochs_per_fit, num_train, device.type)
        where = machine_line(device).removeprefix("machine: ").split(";")[0]
        dynamics_overhead.print_table(found, dynamics, callback_repeats, epochs_per_fit, num_train, where)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

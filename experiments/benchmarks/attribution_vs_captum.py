"""Our attribution methods against Captum's — at Captum's defaults *and* at Captum's best settings.

    PYTHONPATH=. python experiments/benchmarks/attribution_vs_captum.py [--models smallcnn resnet20 smallcnn128]
        [--repeats 7] [--threads 1] [--methods saliency integrated_gradients ...]

Prints, per model, one ready-to-paste Markdown table: our time, Captum's at its defaults, Captum's at
its best setting (and which), our time / Captum default and our time / Captum best — medians over
``--repeats`` interleaved runs (ours, default, best, ours, default, best, …: load drifting on a
shared machine hits all alike) with the range of the per-repeat ratios — and the largest absolute
difference of our attributions from Captum's default ones. A machine line (CPU, threads, torch
version, load average) heads the output. Captum is a test/benchmark-only dependency.

**Captum at its best.** Before the timed runs, every Captum candidate setting runs twice and the
faster (minimum) is kept:

* the input layout: NCHW (what a caller usually has) or channels-last (``x.contiguous(memory_format=
  torch.channels_last)``: CPU convolutions run faster on it, and Captum keeps the caller's layout);
* Integrated Gradients: ``internal_batch_size`` ∈ {None (all 50 × B path points at once), 64, 128,
  256, 512};
* SmoothGrad (``NoiseTunnel``): ``nt_samples_batch_size`` ∈ {None (all), 1, 2, 5};
* occlusion: ``perturbations_per_eval`` ∈ {1, 2, 4, 16, 64};
* the one-pass methods (saliency, input×gradient, guided backprop, deconvnet, Grad-CAM, guided
  Grad-CAM, DeepLIFT, DeepSHAP) have no batching parameter: only the layout.

Ours runs at its defaults (``max_batch=None``; it picks the CPU pass size and layout itself, and folds
eval BatchNorms into the convolutions except for the methods whose points lie near ties, see
``AttributionMethod.fold_batchnorm_default``). ``integrated_gradients_folded`` is IG with
``fold_batchnorm=True``: faster, the same up to float rounding except where rounding flips a
max-pool choice near the baseline (up to ~1e-3 of the attribution scale on SmallCNN).

Models (``--models``): ``smallcnn`` — SmallCNN(width=16), 64 × 3 × 32 × 32; ``resnet20`` — the CIFAR
ResNet-20, 64 × 3 × 32 × 32; ``smallcnn128`` — SmallCNN(width=16) on 8 × 3 × 128 × 128 images
(occlusion with 16 × 16 windows at stride 16 there). Targets (issue 21): ≤ 0.95 against Captum's
best on every one-pass method, ≤ 0.7 on Integrated Gradients, SmoothGrad and occlusion.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timing import run_seconds  # this folder is on sys.path when run as a script

from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute
from xai_lightning.models import resnet20

warnings.filterwarnings("ignore")

NCHW, CHANNELS_LAST = torch.contiguous_format, torch.channels_last
N_NOISE, STDEV, NOISE_SEED = 10, 0.1, 7


@dataclass
class Workload:
    name: str
    model: torch.nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    background: torch.Tensor
    cam_layer: str
    occlusion: dict  # window, stride (ours) — Captum gets the same as sliding_window_shapes/strides


def workload(name: str, device: torch.device | str = "cpu", num_images: int | None = None) -> Workload:
    """The model (eval mode) and inputs of ``--models name`` on ``device``; ``num_images`` overrides the
    number of images (the background stays 8 images)."""
    torch.manual_seed(0)
    if name == "smallcnn":
        model, size, batch, layer, occlusion = SmallCNN(num_classes=5, width=16), 32, 64, "features.13", (8, 4)
    elif name == "resnet20":
        model, size, batch, layer, occlusion = resnet20(num_classes=5), 32, 64, "layer3.2", (8, 4)
    elif name == "smallcnn128":
        model, size, batch, layer, occlusion = SmallCNN(num_classes=5, width=16), 128, 8, "features.13", (16, 16)
    else:
        raise ValueError(name)
    batch = batch if num_images is None else num_images
    images = torch.rand(batch, 3, size, size)
    targets = torch.randint(0, 5, (batch,))
    return Workload(
        name,
        model.eval().to(device),
        images.to(device),
        targets.to(device),
        torch.rand(8, 3, size, size).to(device),
        layer,
        {"window": occlusion[0], "stride": occlusion[1]},
    )


def layer_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)


def candidates(method: str, w: Workload) -> tuple[Callable[[], torch.Tensor], dict[str, Callable[[], torch.Tensor]]]:
    """``(ours, {setting: captum})``; the first Captum setting is Captum's default."""
    from captum import attr as ca

    model, t, size = w.model, w.targets, w.images.shape[-2:]
    layer = layer_module(model, w.cam_layer)
    inputs = {"NCHW": w.images, "channels-last": w.images.contiguous(memory_format=CHANNELS_LAST)}
    window, stride = w.occlusion["window"], w.occlusion["stride"]

    def noise_for_ours():
        torch.manual_seed(NOISE_SEED)
        # Drawn like Captum's NoiseTunnel (one normal draw on the inputs' device after the same seed): the same noise.
        noise_shape = (w.images.shape[0] * N_NOISE, *w.images.shape[1:])
        noise = torch.normal(0, torch.full(noise_shape, STDEV, device=w.images.device))
        return noise.view(w.images.shape[0], N_NOISE, *w.images.shape[1:])

    ours_options: dict[str, dict] = {
        "saliency": {},
        "input_x_gradient": {},
        "guided_backprop": {},
        "deconvnet": {},
        "deeplift": {},
        "integrated_gradients": {"steps": 50},
        "integrated_gradients_folded": {"steps": 50, "fold_batchnorm": True},
        "gradcam": {"layer": w.cam_layer},
        "guided_gradcam": {"layer": w.cam_layer, "interpolate_mode": "nearest"},
        "deep_shap": {"baselines": w.background},
        "occlusion": {"window": window, "stride": stride, "baseline": 0.0, "score": "logit"},
    }
    if method == "smoothgrad":
        noise = noise_for_ours()

        def ours() -> torch.Tensor:
            return attribute(
                model, w.images, t, "smoothgrad", n_samples=N_NOISE, wrapped_options={"abs": True}, noise=noise
            )
    else:
        name = method.removesuffix("_folded")

        def ours() -> torch.Tensor:
            return attribute(model, w.images, t, name, **ours_options[method])

    def one_pass(make: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
        return {f"{layout}": (lambda x=x: make(x)) for layout, x in inputs.items()}

    if method == "saliency":
        captum = one_pass(lambda x: ca.Saliency(model).attribute(x, target=t))
    elif method == "input_x_gradient":
        captum = one_pass(lambda x: ca.InputXGradient(model).attribute(x, target=t))
    elif method == "guided_backprop":
        captum = one_pass(lambda x: ca.GuidedBackprop(model).attribute(x, target=t))
    elif method == "deconvnet":
        captum = one_pass(lambda x: ca.Deconvolution(model).attribute(x, target=t))
    elif method == "deeplift":
        captum = one_pass(lambda x: ca.DeepLift(model).attribute(x, target=t))
    elif method == "deep_shap":
        background = {"NCHW": w.background, "channels-last": w.background.contiguous(memory_format=CHANNELS_LAST)}
        captum = {
            layout: (lambda x=x, b=background[layout]: ca.DeepLiftShap(model).attribute(x, baselines=b, target=t))
            for layout, x in inputs.items()
        }
    elif method == "gradcam":

        def gradcam(x):
            raw = ca.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
            return F.interpolate(raw, size=size, mode="bilinear", align_corners=False).squeeze(1)

        captum = one_pass(gradcam)
    elif method == "guided_gradcam":
        captum = one_pass(lambda x: ca.GuidedGradCam(model, layer).attribute(x, target=t))
    elif method in ("integrated_gradients", "integrated_gradients_folded"):
        captum = {
            f"{layout}, internal_batch_size={ibs}": (
                lambda x=x, ibs=ibs: ca.IntegratedGradients(model).attribute(
                    x, target=t, n_steps=50, internal_batch_size=ibs
                )
            )
            for ibs in (None, 64, 128, 256, 512)
            for layout, x in inputs.items()
        }
    elif method == "smoothgrad":

        def smoothgrad(x, batch):
            torch.manual_seed(NOISE_SEED)
            return ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=N_NOISE, stdevs=STDEV, target=t, nt_samples_batch_size=batch
            )

        captum = {
            f"{layout}, nt_samples_batch_size={batch}": (lambda x=x, batch=batch: smoothgrad(x, batch))
            for batch in (None, 1, 2, 5)
            for layout, x in inputs.items()
        }
    elif method == "occlusion":
        shape, strides = (3, window, window), (3, stride, stride)
        captum = {
            f"{layout}, perturbations_per_eval={ppe}": (
                lambda x=x, ppe=ppe: ca.Occlusion(model).attribute(
                    x, target=t, sliding_window_shapes=shape, strides=strides, perturbations_per_eval=ppe
                )
            )
            for ppe in (1, 2, 4, 16, 64)
            for layout, x in inputs.items()
        }
    else:
        raise ValueError(method)
    return ours, captum


METHODS = (
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "gradcam",
    "guided_gradcam",
    "deeplift",
    "deep_shap",
    "integrated_gradients",
    "integrated_gradients_folded",
    "smoothgrad",
    "occlusion",
)
TARGETS = {name: 0.95 for name in METHODS} | {
    "integrated_gradients": 0.7,
    "integrated_gradients_folded": 0.7,
    "smoothgrad": 0.7,
    "occlusion": 0.7,
}


CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU time; steadier on a shared machine)


def best_setting(settings: dict[str, Callable[[], torch.Tensor]], device: torch.device | str = "cpu") -> str:
    """The Captum setting with the smallest of two runs (after one warm-up run each)."""
    for function in settings.values():
        function()
    return min(settings, key=lambda name: min(run_seconds(settings[name], device, CLOCK) for _ in range(2)))


def compare(method: str, w: Workload, repeats: int) -> dict:
    """Times (s, one list per run, interleaved repeats), the default and best Captum settings' names,
    the largest |ours - Captum default| and the three runs themselves (``runs``: ours, default, best)
    on the workload's device (CUDA runs are synchronised around each timed call)."""
    device = w.images.device
    ours, captum = candidates(method, w)
    default_name = next(iter(captum))
    best_name = best_setting(captum, device)
    runs = {"ours": ours, "default": captum[default_name], "best": captum[best_name]}
    results = {name: function() for name, function in runs.items()}  # warm-up, and the results
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, function in runs.items():
            times[name].append(run_seconds(function, device, CLOCK))
    difference = float((results["ours"].float() - results["default"].detach().float()).abs().max())
    return {"times": times, "best": best_name, "default": default_name, "difference": difference, "runs": runs}


def ratio_text(ours: list[float], theirs: list[float]) -> str:
    per_repeat = [a / b for a, b in zip(ours, theirs)]
    return f"{statistics.median(ours) / statistics.median(theirs):.2f} ({min(per_repeat):.2f}-{max(per_repeat):.2f})"


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
        f"{torch.get_num_threads()} torch thread(s); load average at start {load:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="*",
        default=["smallcnn", "resnet20", "smallcnn128"],
        choices=["smallcnn", "resnet20", "smallcnn128"],
    )
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time, for a machine shared with other work (1 thread)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    print(machine_line() + f"; clock: {args.clock}")
    for model_name in args.models:
        w = workload(model_name)
        print(
            f"\n{model_name}: inputs {tuple(w.images.shape)}, median of {args.repeats} interleaved repeats, ratio "
            "ranges over the repeats; time in ms"
        )
        print(
            "| method | ours | Captum default | Captum best | best setting | ours / default | ours / best | target "
            "| max abs diff |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for method in args.methods:
            found = compare(method, w, args.repeats)
            times = found["times"]
            ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
            print(
                f"| {method} | {ms['ours']:.0f} | {ms['default']:.0f} | {ms['best']:.0f} | {found['best']} | "
                f"{ratio_text(times['ours'], times['default'])} | {ratio_text(times['ours'], times['best'])} | "
                f"≤ {TARGETS[method]} | {found['difference']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

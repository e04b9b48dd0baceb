"""Our attribution methods vs Captum's on the same model, batch and settings, in one process.

    PYTHONPATH=. python experiments/benchmarks/attribution_vs_captum.py [--batch 64] [--repeats 3]

For every method both libraries implement, prints the median wall time of each, the ratio
ours / Captum (target: ≤ 1.0) and the largest absolute difference of the attributions. Timings
on a shared CPU are noisy; compare ratios measured in the same run only, where the runs of all
variants are interleaved. Captum is a test/benchmark-only dependency.

Captum runs every method at its defaults. For integrated gradients, SmoothGrad and DeepSHAP that
means all generated rows in one pass (``internal_batch_size=None``: 3,200 path points for IG),
while ours slices forward/backward passes to at most 2^19 input elements on a CPU
(``ExplainedModel.rows_per_pass``): per row, passes of 128-256 images ran 1.5× faster than one
of 3,200 here. A Captum user who sets ``internal_batch_size`` near 170 closes most of that gap.
The one-pass methods (saliency, guided backprop, Grad-CAM, …) do the same arithmetic in both
libraries; ours runs its CPU passes on a channels-last copy of the images
(``ExplainedModel.fast_logits``: forward + input gradient ~1.25× faster there), which is where
their ratios below 1 come from — a Captum user who hands Captum channels-last images gets the same.

Occlusion gets its own table, because Captum's speed there depends on a setting: Captum's
``Occlusion`` evaluates ``perturbations_per_eval`` windows (× the batch) per forward pass, 1 by
default. Two Captum columns:

* **default** — ``perturbations_per_eval=1`` on the caller's NCHW batch: what a Captum user gets;
* **tuned** — the fastest of ``perturbations_per_eval`` ∈ {1, 2, 4, 16} × input layout {NCHW,
  channels-last} found in a first pass (a Captum user may pass a channels-last batch; its
  occluded copies keep that layout and CPU convolutions run faster in it — our plain path uses
  that layout on a CPU, so the tuned column gives Captum the same advantage).

The issue's target, "≤ 0.5 for the perturbation methods thanks to batching", is read against the
**default** column: batching is what Captum's default does not do (one occluded copy of each
image per forward pass). The **tuned** column is the stricter comparison, printed so that nobody
mistakes the default's overheads for an algorithmic gain: on a CPU, batching windows does not
reduce FLOPs (and batches beyond ~100 rows of 32×32 images run slower per row), so our plain path
can at best match a tuned Captum; the incremental forward (Krypton: recompute only the patch of
each layer an occluding window changes) is what reduces the work. Both of our paths are printed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute

from timing import timed_interleaved  # this folder is on sys.path when run as a script

warnings.filterwarnings("ignore")


def timed_pair(ours_fn, captum_fn, repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Median wall times of both (interleaved runs) and their results."""
    timed = timed_interleaved({"ours": ours_fn, "captum": captum_fn}, repeats)
    return timed["ours"][0], timed["captum"][0], timed["ours"][1], timed["captum"][1]


def occlusion_table(model, x, t, repeats: int) -> None:
    """Ours (incremental and plain) against Captum's Occlusion at its default and at its tuned setting."""
    from captum import attr as ca

    window, stride = (3, 8, 8), (3, 4, 4)

    def captum(perturbations_per_eval: int, layout: torch.memory_format):
        inputs = x.contiguous(memory_format=layout)
        return lambda: ca.Occlusion(model).attribute(inputs, target=t, sliding_window_shapes=window, strides=stride,
                                                     perturbations_per_eval=perturbations_per_eval)

    candidates = {(ppe, layout): captum(ppe, layout) for ppe in (1, 2, 4, 16)
                  for layout in (torch.contiguous_format, torch.channels_last)}
    first_pass = {}
    for key, fn in candidates.items():
        start = time.perf_counter()
        fn()
        first_pass[key] = time.perf_counter() - start
    best_ppe, best_layout = min(first_pass, key=first_pass.get)
    layout_name = "channels-last" if best_layout == torch.channels_last else "NCHW"
    variants = {
        "captum default (ppe=1, NCHW)": candidates[(1, torch.contiguous_format)],
        f"captum tuned (ppe={best_ppe}, {layout_name})": candidates[(best_ppe, best_layout)],
        "ours (incremental='auto')": lambda: attribute(model, x, t, "occlusion", window=8, stride=4, baseline=0.0,
                                                       score="logit"),
        "ours (incremental=False)": lambda: attribute(model, x, t, "occlusion", window=8, stride=4, baseline=0.0,
                                                      score="logit", incremental=False),
    }
    timed = timed_interleaved(variants, repeats)
    names = list(variants)
    default_time, tuned_time = timed[names[0]][0], timed[names[1]][0]
    reference = timed[names[0]][1].detach().float()
    windows = x.shape[0] * 7 * 7
    print(f"\nocclusion (8x8, stride 4): {windows:,} occluded images; ratios are time / Captum's")
    print(f"{'variant':34s} {'time (s)':>9s} {'vs default':>10s} {'vs tuned':>9s} {'max |diff|':>11s}")
    for name in names:
        seconds, result = timed[name]
        difference = (result.float() - reference).abs().max().item()
        print(f"{name:34s} {seconds:9.3f} {seconds / default_time:10.2f} {seconds / tuned_time:9.2f} {difference:11.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only-occlusion", action="store_true", help="print the occlusion table only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from captum import attr as ca

    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=args.width).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    t = torch.randint(0, 5, (args.batch,))
    background = torch.rand(8, 3, 32, 32)
    layer = model.features[13]
    n_noise, stdev = 10, 0.1
    noise_seed = 7

    def captum_smoothgrad():
        torch.manual_seed(noise_seed)
        return ca.NoiseTunnel(ca.Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=n_noise, stdevs=stdev,
                                                            target=t)

    def ours_smoothgrad():
        torch.manual_seed(noise_seed)
        noise = torch.normal(0, torch.full((x.shape[0] * n_noise, *x.shape[1:]), stdev))
        return attribute(model, x, t, "smoothgrad", n_samples=n_noise, wrapped_options={"abs": True},
                         noise=noise.view(x.shape[0], n_noise, *x.shape[1:]))

    def captum_gradcam():
        raw = ca.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False).squeeze(1)

    cases = {
        "saliency": (lambda: attribute(model, x, t, "saliency"), lambda: ca.Saliency(model).attribute(x, target=t)),
        "input_x_gradient": (lambda: attribute(model, x, t, "input_x_gradient"),
                             lambda: ca.InputXGradient(model).attribute(x, target=t)),
        "integrated_gradients (50 steps)": (
            lambda: attribute(model, x, t, "integrated_gradients", steps=50),
            lambda: ca.IntegratedGradients(model).attribute(x, target=t, n_steps=50)),
        f"smoothgrad ({n_noise} samples)": (ours_smoothgrad, captum_smoothgrad),
        "guided_backprop": (lambda: attribute(model, x, t, "guided_backprop"),
                            lambda: ca.GuidedBackprop(model).attribute(x, target=t)),
        "deconvnet": (lambda: attribute(model, x, t, "deconvnet"),
                      lambda: ca.Deconvolution(model).attribute(x, target=t)),
        "gradcam": (lambda: attribute(model, x, t, "gradcam", layer="features.13"), captum_gradcam),
        "guided_gradcam": (lambda: attribute(model, x, t, "guided_gradcam", layer="features.13",
                                             interpolate_mode="nearest"),
                           lambda: ca.GuidedGradCam(model, layer).attribute(x, target=t)),
        # Different on this network by design (Captum's ReLU→MaxPool hook order); timing is comparable.
        "deeplift": (lambda: attribute(model, x, t, "deeplift"), lambda: ca.DeepLift(model).attribute(x, target=t)),
        "deep_shap (8 baselines)": (lambda: attribute(model, x, t, "deep_shap", baselines=background),
                                    lambda: ca.DeepLiftShap(model).attribute(x, baselines=background, target=t)),
    }
    print(f"SmallCNN(width={args.width}), batch {tuple(x.shape)}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'method':34s} {'ours (s)':>9s} {'captum (s)':>10s} {'ratio':>6s} {'max |diff|':>11s}")
    for name, (ours_fn, captum_fn) in ({} if args.only_occlusion else cases).items():
        ours_time, captum_time, ours, theirs = timed_pair(ours_fn, captum_fn, args.repeats)
        difference = (ours.float() - theirs.detach().float()).abs().max().item()
        print(f"{name:34s} {ours_time:9.3f} {captum_time:10.3f} {ours_time / captum_time:6.2f} {difference:11.2e}")
    occlusion_table(model, x, t, args.repeats)


if __name__ == "__main__":
    main()

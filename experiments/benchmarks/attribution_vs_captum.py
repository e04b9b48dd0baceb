"""Our attribution methods vs Captum's on the same model, batch and settings, in one process.

    PYTHONPATH=. python experiments/benchmarks/attribution_vs_captum.py [--batch 64] [--repeats 3]

For every method both libraries implement, prints the median wall time of each, the ratio
ours / Captum (target: ≤ 1.0; ≤ 0.5 for occlusion, thanks to batching its windows) and the
largest absolute difference of the attributions. Timings on a shared CPU are noisy; compare
ratios measured in the same run only. Captum is a test/benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute

warnings.filterwarnings("ignore")


def timed_pair(ours_fn, captum_fn, repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Median wall times of both, with their runs interleaved so that load drifting on a shared
    machine hits both alike (timing one fully and then the other biases the ratio)."""
    ours, theirs = ours_fn(), captum_fn()  # warm-up
    ours_times, captum_times = [], []
    for _ in range(repeats):
        for fn, times in ((ours_fn, ours_times), (captum_fn, captum_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(captum_times), ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
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
        "occlusion (8x8, stride 4)": (
            lambda: attribute(model, x, t, "occlusion", window=8, stride=4, baseline=0.0, score="logit",
                              max_batch=1024),
            lambda: ca.Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))),
    }
    print(f"SmallCNN(width={args.width}), batch {tuple(x.shape)}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'method':34s} {'ours (s)':>9s} {'captum (s)':>10s} {'ratio':>6s} {'max |diff|':>11s}")
    for name, (ours_fn, captum_fn) in cases.items():
        ours_time, captum_time, ours, theirs = timed_pair(ours_fn, captum_fn, args.repeats)
        difference = (ours.float() - theirs.detach().float()).abs().max().item()
        print(f"{name:34s} {ours_time:9.3f} {captum_time:10.3f} {ours_time / captum_time:6.2f} {difference:11.2e}")


if __name__ == "__main__":
    main()

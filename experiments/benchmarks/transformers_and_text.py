"""Transformers and text: speed of attention maps, Grad-CAM on ViT blocks, and token occlusion vs Captum.

Three measurements, each timed by medians of ``--repeats`` interleaved runs in this process (the
variants alternate, so load drift on a shared machine hits all alike; see ``timing.py``):

1. **Attention maps in one batched pass.** Rollout (Abnar & Zuidema 2020) and Chefer relevance
   for ``--probes`` images of our VisionTransformer: one forward and one backward pass for the
   whole batch, against the same maps computed image by image (what a per-example loop costs).
2. **Grad-CAM on ViT blocks vs on a CNN of similar forward cost.** SmallCNN's width is chosen so
   that its forward pass on the batch (as Grad-CAM runs it: channels-last on a CPU) costs about
   what the ViT's does; Grad-CAM's time is reported relative to each model's own forward time, and
   the ratio of the two relative costs — the time ratio at equal forward cost — is the figure to
   hold at ≤ 1.2. Two pairings: the layers ``"auto"`` picks (the ViT's last block input, the CNN's
   last layer) and four layers spread over each network. A hand-written hook that starts the
   graph at the block + ``autograd.grad`` on the ViT is the floor any implementation pays: the
   backward pass through the last block (``"auto"`` must sit before its attention, the last place
   patch tokens reach the CLS logit), which is a larger share of a shallow ViT's forward. So the
   pairing runs for ViT depths ``--depths`` (default 4, our small ViT's, and 12, ViT-S/B's).
3. **Token occlusion vs Captum's FeatureAblation** over the same tokens of ``--sentences``
   TriggerText sentences (lengths 8-32, padded to 32) and a TextClassifier: each token replaced by
   padding, drop in the target's probability. Captum ablates one position of every sentence per
   perturbation, ``perturbations_per_eval`` positions per forward pass; that parameter is swept and
   Captum's **best** time is the reference. Ours builds only real tokens' rows, sorts them by length
   and cuts each pass to its longest row. Target: ours / Captum's best ≤ 0.5.

    PYTHONPATH=. python experiments/benchmarks/transformers_and_text.py [--repeats 5] [--probes 64] [--sentences 64]
        [--depths 4 12]

(Not ``transformers.py``: run as a script, a file of that name would shadow the Hugging Face
package for every benchmark in this folder, since Lightning and torchmetrics import it.)
Timings on a shared machine are noisy: re-measure on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds, timed_interleaved

from xai_lightning import grad_cam
from xai_lightning.attribution import TokenOcclusion, attention_maps
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.data import ConceptWorld, TriggerText
from xai_lightning.models import SmallCNN, TextClassifier, VisionTransformer

warnings.filterwarnings("ignore")


def attention_benchmark(probes: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(dim=64, depth=4, heads=4).eval()
    images = ConceptWorld(probes, seed=1).images
    kinds = ("rollout", "relevance")

    def batched():
        return attention_maps(model, images, "predicted", kinds=kinds)

    def looped():
        return [attention_maps(model, images[i : i + 1], "predicted", kinds=kinds) for i in range(probes)]

    timed = timed_interleaved({"batched": batched, "per image": looped}, repeats)
    together, one_by_one = timed["batched"][1], timed["per image"][1]
    difference = max(
        float((together.rollout - torch.cat([r.rollout for r in one_by_one])).abs().max()),
        float((together.relevance - torch.cat([r.relevance for r in one_by_one])).abs().max()),
    )
    print(f"[attention] rollout + Chefer relevance, {probes} probes, ViT(dim 64, depth 4, 8x8 patches):")
    print(
        f"  one batched pass {timed['batched'][0] * 1e3:8.1f} ms   per image {timed['per image'][0] * 1e3:8.1f} ms   "
        f"ratio {timed['batched'][0] / timed['per image'][0]:.2f}   max |difference| {difference:.1e}"
    )


def no_grad_forward(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-grad forward as Grad-CAM runs it (``ExplainedModel.fast_logits``: channels-last images on a CPU)."""
    explained = ExplainedModel(model)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return explained.fast_logits(images)

    return forward


def forward_seconds(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    return median_seconds(no_grad_forward(model, images), repeats)


def matched_cnn(vit: torch.nn.Module, images: torch.Tensor, repeats: int) -> torch.nn.Module:
    """The SmallCNN whose forward time on ``images`` is closest to the ViT's (timed apart: only to pick it)."""
    vit_forward = forward_seconds(vit, images, repeats)
    best = None
    for width in (8, 12, 16, 20, 24, 32, 40, 48, 56, 64):
        torch.manual_seed(0)
        cnn = SmallCNN(num_classes=5, width=width).eval()
        forward = forward_seconds(cnn, images, repeats)
        if best is None or abs(forward / vit_forward - 1) < abs(best[2] / vit_forward - 1):
            best = (cnn, width, forward)
        if forward > 1.5 * vit_forward:
            break
    print(
        f"  forward (no grad, as Grad-CAM runs it): ViT {vit_forward * 1e3:.1f} ms; closest CNN: "
        f"SmallCNN(width={best[1]}) {best[2] * 1e3:.1f} ms"
    )
    return best[0]


def hand_grad_cam_gradient(vit: VisionTransformer, images: torch.Tensor, block: int) -> torch.Tensor:
    """The least work any Grad-CAM of a block needs: a forward that records the graph from the block's
    input on (nothing below it), and one autograd.grad (no maps, no checks)."""
    seen = {}

    def start_recording(_module: torch.nn.Module, args: tuple) -> None:
        torch.set_grad_enabled(True)
        seen["tokens"] = args[0].requires_grad_(True)

    handle = vit.blocks[block].norm1.register_forward_pre_hook(start_recording)
    try:
        with torch.no_grad():
            logits = vit(images)
    finally:
        handle.remove()
    return torch.autograd.grad(logits.max(1).values.sum(), seen["tokens"])[0]


def grad_cam_benchmark(probes: int, repeats: int, depths: tuple[int, ...]) -> None:
    images = ConceptWorld(probes, seed=2).images
    for depth in depths:
        grad_cam_pairing(depth, images, repeats)


def grad_cam_pairing(depth: int, images: torch.Tensor, repeats: int) -> None:
    """Grad-CAM on a ViT of ``depth`` blocks against the SmallCNN of about its forward cost."""
    torch.manual_seed(0)
    vit = VisionTransformer(dim=64, depth=depth, heads=4).eval()
    print(f"[grad-cam] {images.shape[0]} images, ViT(dim 64, depth {depth}, 8x8 patches):")
    cnn = matched_cnn(vit, images, repeats)
    spread = sorted({round(depth * (i + 1) / 4) - 1 for i in range(4)})
    blocks = [f"blocks.{i}.norm1:input@vit" for i in spread]
    stages = ["features.6", "features.13", "features.17", "features.20"]
    # The forwards are timed among the Grad-CAM runs, so that load drift hits numerator and denominator alike.
    timed = timed_interleaved(
        {
            "vit forward": no_grad_forward(vit, images),
            "cnn forward": no_grad_forward(cnn, images),
            "vit last": lambda: grad_cam(vit, images, "predicted", "auto"),
            "cnn last": lambda: grad_cam(cnn, images, "predicted", "auto"),
            "vit spread": lambda: grad_cam(vit, images, "predicted", blocks),
            "cnn spread": lambda: grad_cam(cnn, images, "predicted", stages),
            "vit hand last": lambda: hand_grad_cam_gradient(vit, images, depth - 1),
        },
        repeats,
    )
    vit_forward, cnn_forward = timed["vit forward"][0], timed["cnn forward"][0]
    for which, what in (
        ("last", "the last block ('auto') vs the CNN's last layer ('auto')"),
        ("spread", f"blocks {spread} vs 4 layers from every stage"),
    ):
        vit_time, cnn_time = timed[f"vit {which}"][0], timed[f"cnn {which}"][0]
        relative = (vit_time / vit_forward) / (cnn_time / cnn_forward)
        print(
            f"  {what}: ViT {vit_time * 1e3:.1f} ms ({vit_time / vit_forward:.2f}x its forward), CNN "
            f"{cnn_time * 1e3:.1f} ms ({cnn_time / cnn_forward:.2f}x); at equal forward cost ViT/CNN = "
            f"{relative:.2f} (target <= 1.2)"
        )
    hand = timed["vit hand last"][0]
    floor = (hand / vit_forward) / (timed["cnn last"][0] / cnn_forward)
    print(
        f"  hand-written minimum for the last block (forward recorded from the block on + autograd.grad, "
        f"no maps): {hand * 1e3:.1f} ms ({hand / vit_forward:.2f}x its forward); ours / minimum "
        f"{timed['vit last'][0] / hand:.2f}; that minimum against our CNN Grad-CAM at equal forward cost: "
        f"{floor:.2f}"
    )


def occlusion_benchmark(sentences: int, repeats: int, sweep: tuple[int, ...]) -> None:
    from captum.attr import FeatureAblation

    data = TriggerText(sentences, seed=3, min_length=8, max_length=32)
    torch.manual_seed(0)
    model = TextClassifier(data.vocab_size, 2, dim=32, depth=2, heads=2, max_length=32).eval()
    ids, targets = data.ids, data.labels
    ours = TokenOcclusion(mode="pad", score="probability")

    def probability(batch):
        return model(batch).softmax(1)

    mask = torch.arange(ids.shape[1]).expand_as(ids)
    functions = {"ours": lambda: ours.attribute(model, ids, targets)}
    for per_eval in sweep:
        functions[f"captum ppe={per_eval}"] = lambda per_eval=per_eval: FeatureAblation(probability).attribute(
            ids, baselines=0, target=targets, feature_mask=mask, perturbations_per_eval=per_eval
        )
    with torch.no_grad():
        timed = timed_interleaved(functions, repeats)
    reference = timed[f"captum ppe={sweep[0]}"][1]
    difference = float((timed["ours"][1] - torch.where(ids != 0, reference, 0.0)).abs().max())
    captum = {name: seconds for name, (seconds, _) in timed.items() if name != "ours"}
    best = min(captum, key=captum.get)
    print(
        f"[token occlusion] {sentences} sentences, {int((ids != 0).sum())} tokens (padded to {ids.shape[1]}), "
        f"TextClassifier(dim 32, depth 2):"
    )
    for name, seconds in captum.items():
        print(f"  {name:16s} {seconds * 1e3:8.1f} ms")
    print(
        f"  ours             {timed['ours'][0] * 1e3:8.1f} ms   ours / Captum best ({best}) "
        f"{timed['ours'][0] / captum[best]:.2f} (target <= 0.5); max |difference| {difference:.1e}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 12], help="ViT depths for the Grad-CAM pairing")
    parser.add_argument("--only", choices=["attention", "gradcam", "occlusion"], default=None)
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; timings are medians of {args.repeats} "
        "interleaved runs (re-measure on a quiet machine)"
    )
    if args.only in (None, "attention"):
        attention_benchmark(args.probes, args.repeats)
    if args.only in (None, "gradcam"):
        grad_cam_benchmark(args.probes, args.repeats, tuple(args.depths))
    if args.only in (None, "occlusion"):
        occlusion_benchmark(args.sentences, args.repeats, tuple(args.sweep))


if __name__ == "__main__":
    main()

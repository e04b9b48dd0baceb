"""Evaluate an explainer network against its performer on a set of images.

Two steps, so that a distributed caller can shard the first and combine before the second:

* :func:`explainer_outputs` — per-image results (one row per image): the performer's logits and
  its logits when its upper layers run on the explainer's reconstruction (the "Δ error" of
  Zhang et al. 2018), ``p``, reconstruction error terms, the explainer's interpretable maps, and
  the peaks of the explainer's and the performer's own filters;
* :func:`summarise_explainer_outputs` — scalars over all images: mean ``p``, relative
  reconstruction error, filter loss, accuracy/agreement through the explainer, and the location
  instability (:mod:`~xai_lightning.explainer.filter_locations`) of the explainer's filters and
  of the performer's filters at the input and target layers.

:func:`evaluate_explainer` does both at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xai_lightning.core import LayerCapture, batch_slices, normalize_layer_name, select_logits
from xai_lightning.explainer.explainer_network import ExplainerNetwork
from xai_lightning.explainer.filter_locations import filter_peaks, location_instability
from xai_lightning.explainer.filter_templates import filter_loss
from xai_lightning.explainer.layer_substitution import forward_with_layer_output

__all__ = ["ExplainerEvaluation", "evaluate_explainer", "explainer_outputs", "summarise_explainer_outputs"]


@torch.no_grad()
def explainer_outputs(
    model: nn.Module,
    explainer: ExplainerNetwork,
    input_layer: str,
    target_layer: str,
    images: torch.Tensor,
    max_batch: int | None = None,
    output_key: str | int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image results of the explainer on ``images (N, C, H, W)``; every tensor has N rows.

    Run it in eval mode without disturbing training, e.g. inside
    :func:`~xai_lightning.core.observe`. Keys:

    ``logits``, ``explainer_logits`` ``(N, K)``; ``p`` ``(N,)``; ``squared_error``,
    ``target_energy`` ``(N,)`` (``Σ(x̂ − x*)²`` and ``Σ x*²`` per image); ``explainer_raw/<i>``
    ``(N, F, h, w)`` the maps of interpretable layer ``i`` before the mask; ``explainer_peaks``,
    ``explainer_scores``, ``input_peaks``, ``input_scores``, ``target_peaks``, ``target_scores``:
    peak positions ``(N, F, 2)`` (``(x, y)`` fractions) and peak values ``(N, F)`` of the
    explainer's last interpretable filters and of the performer's filters at both layers.
    """
    input_name, target_name = normalize_layer_name(input_layer), normalize_layer_name(target_layer)
    parts: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.detach().float())

    device = next(explainer.parameters()).device
    for rows in batch_slices(images.shape[0], max_batch):
        batch = images[rows]
        with LayerCapture(model, [input_name, target_name]) as capture:
            logits = select_logits(model(batch), output_key)
        features_in = capture.activations[input_name].float().to(device)
        features_target = capture.activations[target_name].float().to(device)
        out = explainer(features_in)
        reconstruction = out.reconstruction.to(features_target.device)
        through = select_logits(forward_with_layer_output(model, target_name, reconstruction, batch), output_key)
        add("logits", logits)
        add("explainer_logits", through)
        add("p", out.p)
        add("squared_error", (reconstruction - features_target).square().flatten(1).sum(1))
        add("target_energy", features_target.square().flatten(1).sum(1))
        for index, raw in enumerate(out.interpretable_raw):
            add(f"explainer_raw/{index}", raw)
        for name, maps in (
            ("explainer", out.interpretable_raw[-1]),
            ("input", features_in),
            ("target", features_target),
        ):
            peaks, scores = filter_peaks(maps)
            add(f"{name}_peaks", peaks)
            add(f"{name}_scores", scores)
    return {key: torch.cat(values) for key, values in parts.items()}


@dataclass
class ExplainerEvaluation:
    """Scalars from :func:`summarise_explainer_outputs` and the per-filter instabilities.

    ``scalars`` keys: ``p``, ``reconstruction_error`` (``Σ‖x̂ − x*‖² / Σ‖x*‖²``), ``filter_loss``,
    ``agreement`` (fraction of images where the prediction through the explainer equals the
    performer's), ``accuracy/performer``, ``accuracy/explainer`` and ``delta_error`` (explainer
    error − performer error; with labels), ``location_instability/explainer``,
    ``location_instability/input``, ``location_instability/target`` (with landmarks).
    """

    scalars: dict[str, float]
    instability: dict[str, torch.Tensor] = field(default_factory=dict)


def summarise_explainer_outputs(
    outputs: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    landmarks: torch.Tensor | None = None,
    top_k: int = 20,
    image_size: tuple[int, int] = (1, 1),
) -> ExplainerEvaluation:
    """Scalars over all images from :func:`explainer_outputs` (see :class:`ExplainerEvaluation`).

    Args:
        labels: ``(N,)`` class labels, for accuracies.
        landmarks: ``(N, L, 2)`` part landmarks as ``(x, y)`` fractions (NaN where absent), for
            location instability.
        top_k: top-activating images per filter for location instability.
        image_size: ``(H, W)`` of the images (its aspect ratio scales distances).
    """
    scalars: dict[str, float] = {}
    instability: dict[str, torch.Tensor] = {}
    scalars["p"] = float(outputs["p"].mean())
    scalars["reconstruction_error"] = float(
        outputs["squared_error"].sum() / outputs["target_energy"].sum().clamp_min(1e-12)
    )
    raw_keys = sorted(key for key in outputs if key.startswith("explainer_raw/"))
    if outputs["p"].shape[0] >= 2 and raw_keys:
        scalars["filter_loss"] = float(torch.stack([filter_loss(outputs[key]) for key in raw_keys]).mean())
    predicted = outputs["logits"].argmax(1)
    through = outputs["explainer_logits"].argmax(1)
    scalars["agreement"] = float((predicted == through).float().mean())
    if labels is not None:
        labels = labels.to(predicted.device)
        performer = float((predicted == labels).float().mean())
        explained = float((through == labels).float().mean())
        scalars["accuracy/performer"] = performer
        scalars["accuracy/explainer"] = explained
        scalars["delta_error"] = performer - explained
    if landmarks is not None:
        for name in ("explainer", "input", "target"):
            result = location_instability(
                outputs[f"{name}_peaks"], outputs[f"{name}_scores"], landmarks, top_k=top_k, image_size=image_size
            )
            scalars[f"location_instability/{name}"] = result.mean
            instability[name] = result.per_filter
    return ExplainerEvaluation(scalars=scalars, instability=instability)


def evaluate_explainer(
    model: nn.Module,
    explainer: ExplainerNetwork,
    input_layer: str,
    target_layer: str,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    landmarks: torch.Tensor | None = None,
    top_k: int = 20,
    max_batch: int | None = 256,
    output_key: str | int | None = None,
) -> ExplainerEvaluation:
    """:func:`explainer_outputs` then :func:`summarise_explainer_outputs`, in eval mode (observer guard)."""
    from xai_lightning.core import observe

    with observe(model):
        outputs = explainer_outputs(model, explainer, input_layer, target_layer, images, max_batch, output_key)
    image_size = (images.shape[-2], images.shape[-1])
    return summarise_explainer_outputs(outputs, labels, landmarks, top_k, image_size)

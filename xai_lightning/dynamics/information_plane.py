"""The information plane from trained decoders (Darlow & Storkey, "What Information Does a ResNet
Compress?", 2020).

For a layer's representation ``h``, small decoders trained on *detached* features (their own
parameters and optimiser; nothing flows back into the network) give:

* ``I(y; h) ≥ H(y) − E[−log q(y | h)]`` (Barber & Agakov 2003) with ``q(y | h)`` a softmax decoder.
  Evaluated on held-out examples (not used to fit ``q``), this is a lower bound on the mutual
  information of the held-out set's empirical distribution, for any ``q``; a better decoder
  tightens it. ``H(y)`` is the plug-in entropy of the held-out labels.
* ``I(x; h)`` as Darlow & Storkey estimate it: ``E[−log q₀(x)] − E[−log q(x | h)]``, an
  unconditional model ``q₀`` against a conditional decoder ``q(x | h)``. Since
  ``I(x; h) ≥ H(x) − E[−log q(x | h)]`` and ``E[−log q₀(x)] ≥ H(x)``, the estimate is the lower bound
  plus ``E[−log q₀(x)] − H(x)``, the unconditional model's excess, which does **not** depend on the
  network: we fit ``q₀`` once (closed form) on the decoder-training images, so it is one constant
  for every epoch and layer, and the trajectory in the plane has the shape of the bound.

The decoders read standardised features (statistics of the decoder-training features) and
model ``x`` through ``g(x)``, the image average-pooled to ``target_size × target_size``: by the
data-processing inequality ``I(x; h) ≥ I(g(x); h)``, so this keeps the bound a bound while making
the decoders small. ``q(g(x) | h)`` is a Gaussian with a decoded mean and a learned per-dimension
variance; ``q₀`` a Gaussian with the data's per-dimension mean and variance. Units are bits.
Decoders are linear by default (``hidden > 0``: one hidden ReLU layer); their output layers start at
the uninformed solution (0 bits) and hidden layers from their own ``torch.Generator``. They are
trained full-batch with Adam (no sampling, so fits are deterministic), with early stopping on a
fixed validation part of the decoder-training examples (:meth:`InformationPlane.fit`), so that
uninformative features do not produce overfitted decoders and strongly negative bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "InformationPlane",
    "LayerDecoders",
    "entropy_bits",
    "gaussian_nll_bits",
    "image_targets",
]

LOG2 = math.log(2.0)


def entropy_bits(labels: torch.Tensor, num_classes: int | None = None) -> float:
    """Plug-in entropy (bits) of the empirical label distribution of ``labels (N,)``."""
    counts = torch.bincount(torch.as_tensor(labels).long().cpu(), minlength=num_classes or 0).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def gaussian_nll_bits(target: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``(N,)`` negative log-density (bits) of ``target (N, D)`` under independent Gaussians.

    ``mean`` and ``log_var`` broadcast against ``target``: pass a per-dimension ``(D,)`` log-variance
    as it is (expanding it to ``(N, D)`` first would take ``N·D`` exponentials instead of ``D``).
    """
    nats = 0.5 * (math.log(2 * math.pi) + log_var + (target - mean).square() / log_var.exp())
    return nats.sum(1) / LOG2


def image_targets(images: torch.Tensor, target_size: int) -> torch.Tensor:
    """``g(x)``: ``images (N, C, H, W)`` average-pooled to at most ``target_size²`` positions, ``(N, D)`` float."""
    if images.shape[-2] > target_size or images.shape[-1] > target_size:
        images = F.adaptive_avg_pool2d(
            images.float(), (min(target_size, images.shape[-2]), min(target_size, images.shape[-1]))
        )
    return images.flatten(1).float()


def _mlp(inputs: int, outputs: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(inputs, outputs)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def _output_layer(decoder: nn.Module) -> nn.Linear:
    """The output ``nn.Linear`` of a decoder built by :func:`_mlp`: the decoder itself, or its Sequential's last."""
    return cast(nn.Linear, decoder if isinstance(decoder, nn.Linear) else cast(nn.Sequential, decoder)[-1])


def _adam(groups: list[dict], lr: float) -> torch.optim.Adam:
    """Adam over ``groups``, fused where this torch has a fused kernel for the parameters' device.

    The decoders take hundreds of small steps per epoch; the fused step (one kernel per group,
    CPU since torch 2.4) is the same update up to float rounding at under half the time of the
    per-parameter loop.
    """
    try:  # copies: a failed construction may already have filled the groups' defaults in
        return torch.optim.Adam([dict(group) for group in groups], lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused Adam for this device in this torch version
        return torch.optim.Adam(groups, lr=lr)


class LayerDecoders(nn.Module):
    """``q(y | h)`` and ``q(g(x) | h)`` for one layer with ``feature_dim``-dimensional features."""

    # Buffers registered in ``__init__`` (declared here for type checkers).
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, feature_dim: int, num_classes: int, target_dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.label_decoder = _mlp(feature_dim, num_classes, hidden)
        self.image_decoder = _mlp(feature_dim, target_dim, hidden)
        self.image_log_var = nn.Parameter(torch.zeros(target_dim))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def head_state(self, head: str) -> dict[str, torch.Tensor]:
        """Copies of the parameters of the ``"label"`` or ``"image"`` head (for early stopping)."""
        return {
            name: value.detach().clone() for name, value in self.state_dict().items() if name.startswith(f"{head}_")
        }

    def load_head_state(self, head: str, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        for name, value in state.items():
            own[name].copy_(value)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def losses(
        self, features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N,)`` cross-entropy of the labels and ``(N,)`` NLL of the targets, both in bits."""
        h = self.standardise(features)
        label_bits = F.cross_entropy(self.label_decoder(h), labels, reduction="none") / LOG2
        log_var = self.image_log_var.clamp(-14.0, 6.0)  # (D,), broadcast over the examples
        image_bits = gaussian_nll_bits(targets, self.image_decoder(h), log_var)
        return label_bits, image_bits


class InformationPlane(nn.Module):
    """Decoders for several layers, their Adam optimiser, and the bounds they give.

    Args:
        feature_dims: ``{layer: D}`` feature dimension of every layer.
        num_classes: classes of ``y``.
        target_dim: dimension of ``g(x)`` (see :func:`image_targets`).
        hidden: 0 = linear decoders; > 0 = one hidden ReLU layer of this width.
        lr, weight_decay: the decoders' Adam settings (weight decay on weight matrices only).
        seed: seeds the decoders' initialisation through a private ``torch.Generator``.

    Example::

        plane = InformationPlane({"penultimate": 128}, num_classes=5, target_dim=192)
        plane.fit(train_features, train_labels, train_targets, steps=200)
        bounds = plane.bounds(test_features, test_labels, test_targets)   # {layer: (I(x;h), I(y;h))}
    """

    # Buffers registered in ``__init__`` (declared here for type checkers).
    target_mean: torch.Tensor
    target_log_var: torch.Tensor
    unconditional_fitted: torch.Tensor

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        target_dim: int,
        *,
        hidden: int = 0,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layer_names = list(feature_dims)
        self.num_classes = num_classes
        self.decoders = nn.ModuleList(
            [LayerDecoders(dim, num_classes, target_dim, hidden) for dim in feature_dims.values()]
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.decoders.parameters():
                if parameter.dim() == 2:  # Linear weights: PyTorch's default bound, from our generator
                    bound = 1.0 / math.sqrt(parameter.shape[1])
                    parameter.copy_(torch.empty_like(parameter).uniform_(-bound, bound, generator=generator))
                elif parameter.dim() == 1:
                    parameter.zero_()
        self.register_buffer("target_mean", torch.zeros(target_dim))
        self.register_buffer("target_log_var", torch.zeros(target_dim))
        self.register_buffer("unconditional_fitted", torch.zeros((), dtype=torch.bool))
        # Weight decay on the weight matrices only: biases and the log-variance carry the uninformed
        # solution (means, class frequencies, data variance) and must not be pulled towards 0.
        matrices = [p for p in self.decoders.parameters() if p.dim() == 2]
        others = [p for p in self.decoders.parameters() if p.dim() != 2]
        self.optimizer = _adam(
            [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}], lr
        )
        self.steps = 0
        self.split_seed = seed

    def _decoder(self, layer: str) -> LayerDecoders:
        return cast(LayerDecoders, self.decoders[self.layer_names.index(layer)])

    def fit_unconditional(self, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """Closed-form maximum-likelihood ``q₀``: per-dimension mean and variance (floored at 1e-6).

        The decoders' output layers start *at* the uninformed solution: zero weights, biases at the
        target mean / the log class frequencies, log-variance at ``q₀``'s. Both estimates start at
        0 bits and every step can only use what ``h`` tells about ``x`` and ``y``.
        """
        with torch.no_grad():
            self.target_mean.copy_(targets.mean(0))
            self.target_log_var.copy_(targets.var(0, unbiased=False).clamp_min(1e-6).log())
            self.unconditional_fitted.fill_(True)
            frequencies = torch.bincount(labels.long().cpu(), minlength=self.num_classes).double()
            log_prior = (frequencies.clamp_min(0.5) / frequencies.sum()).log().float()
            for layer in self.layer_names:
                decoder = self._decoder(layer)
                label_out = _output_layer(decoder.label_decoder)
                image_out = _output_layer(decoder.image_decoder)
                label_out.weight.zero_()
                label_out.bias.copy_(log_prior)
                image_out.weight.zero_()
                image_out.bias.copy_(self.target_mean)
                decoder.image_log_var.copy_(self.target_log_var)

    def fit(
        self,
        features: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        targets: torch.Tensor,
        steps: int,
        *,
        validation_fraction: float = 0.2,
        check_every: int = 10,
    ) -> float:
        """``steps`` full-batch Adam steps on every layer's decoders (warm-started), with early stopping.

        A fixed, seeded ``validation_fraction`` of the examples is held out of the gradient steps;
        every ``check_every`` steps each decoder head (the label head; the image head with its
        variance) of each layer is scored on it, and at the end every head returns to its best
        state — the starting state included, so a fit never leaves a head worse on the
        validation examples than it found it (decoders of uninformative features stay near the
        uninformed solution instead of overfitting). Feature standardisation is refreshed from
        ``features`` first. Gradients are enabled even inside ``no_grad``/``inference_mode``
        (Lightning's validation hooks); only the decoders' own parameters receive them.

        Returns the best summed validation loss (bits; label + per-dimension image NLL).
        """
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
        if not bool(self.unconditional_fitted):
            self.fit_unconditional(targets, labels)
        with torch.inference_mode(False), torch.enable_grad():
            inputs = {layer: features[layer].detach().float().clone() for layer in self.layer_names}
            targets = targets.detach().float().clone()
            labels = labels.detach().long().clone()
            count = labels.shape[0]
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.split_seed))
            held = round(validation_fraction * count) if count > 1 else 0
            validation, train = order[:held], order[held:] if held < count else order
            # The two parts, indexed once (not at every step).
            fit_part = ({layer: inputs[layer][train] for layer in self.layer_names}, labels[train], targets[train])
            check_part = (
                {layer: inputs[layer][validation] for layer in self.layer_names},
                labels[validation],
                targets[validation],
            )
            with torch.no_grad():
                for layer in self.layer_names:
                    decoder = self._decoder(layer)
                    decoder.feature_mean.copy_(fit_part[0][layer].mean(0))
                    decoder.feature_std.copy_(fit_part[0][layer].std(0, unbiased=False).clamp_min(1e-6))
            best: dict[tuple[str, str], tuple[float, dict[str, torch.Tensor]]] = {}

            def check() -> None:
                """Score every head on the validation part; keep each head's best state."""
                if held == 0:
                    return
                with torch.no_grad():
                    for layer in self.layer_names:
                        decoder = self._decoder(layer)
                        label_bits, image_bits = decoder.losses(check_part[0][layer], check_part[1], check_part[2])
                        for head, loss in (("label", float(label_bits.mean())), ("image", float(image_bits.mean()))):
                            if (layer, head) not in best or loss < best[(layer, head)][0]:
                                best[(layer, head)] = (loss, decoder.head_state(head))

            check()
            for step in range(steps):
                loss = torch.zeros(())
                for layer in self.layer_names:
                    label_bits, image_bits = self._decoder(layer).losses(fit_part[0][layer], fit_part[1], fit_part[2])
                    loss = loss + label_bits.mean() + image_bits.mean() / targets.shape[1]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.steps += 1
                if (step + 1) % check_every == 0 or step + 1 == steps:
                    check()
            with torch.no_grad():
                for (layer, head), (_, state) in best.items():
                    self._decoder(layer).load_head_state(head, state)
        return sum(loss / (targets.shape[1] if head == "image" else 1) for (_, head), (loss, _) in best.items())

    def bounds(
        self, features: Mapping[str, torch.Tensor], labels: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, tuple[float, float]]:
        """``{layer: (I(x; h) estimate, I(y; h) lower bound)}`` in bits on held-out examples."""
        labels = labels.long()
        entropy = entropy_bits(labels, self.num_classes)
        with torch.no_grad():
            unconditional = gaussian_nll_bits(targets.float(), self.target_mean, self.target_log_var).mean()
            out = {}
            for layer in self.layer_names:
                label_bits, image_bits = self._decoder(layer).losses(features[layer].float(), labels, targets.float())
                out[layer] = (float(unconditional - image_bits.mean()), float(entropy - label_bits.mean()))
        return out

    def training_state(self) -> dict:
        """Decoder weights, the optimiser's state and the step count (for checkpoints)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
        }

    def load_training_state(self, state: Mapping) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state.get("steps", 0))

"""The small BARS CaCE study the CaCE tests share: classifiers at several confounding rows, and VAEs.

:func:`bars_study` trains, for one seed, a tiny SmallCNN per row (symmetric confounding 0, 0.5,
0.9 and two asymmetric rows) on the default BARS geometry (shape harder than colour), and the
conditional VAEs behind EncDec-CaCE on the symmetric rows. ``experiments/cace/measure_margins.py``
runs it over several seeds and thread counts to measure the margins the tests assert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.concepts import (
    ConceptIntervention,
    bars_colour_intervention,
    conexp,
    fit_intervention_vae,
    ground_truth_cace,
    vae_estimates,
)
from xai_lightning.data import Bars
from xai_lightning.data.bars import orientation_evidence
from xai_lightning.models import SmallCNN

SIZE = 16
NUM_TRAIN = 1500
NUM_TEST = 500
EPOCHS = 6
LEVELS = (0.0, 0.5, 0.9)
#: Asymmetric rows: horizontal bars always red (vertical 50/50), and its mirror image.
ASYMMETRIC = {"horizontal_red": [[1.0, 0.0], [0.5, 0.5]], "vertical_green": [[0.5, 0.5], [0.0, 1.0]]}
VAE = {"epochs": 30, "latent_dim": 8, "width": 32, "batch_size": 64, "lr": 4e-3, "kl_warmup": 0.5}


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int = EPOCHS, seed: int = 0, width: int = 4, lr: float = 5e-3
) -> nn.Module:
    """A tiny SmallCNN trained with Adam in plain torch (seeded), returned in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=int(labels.max()) + 1, width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(labels), generator=generator).split(32):
            loss = F.cross_entropy(model(images[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@dataclass
class StudyRow:
    """One trained model with its held-out intervention and the estimates the tests check."""

    model: nn.Module
    test: ConceptIntervention
    gt: float
    gt_class: tuple[float, float]
    conexp: float
    estimates: dict[str, dict[str, float]] = field(default_factory=dict)  # VAE variant -> vae_estimates


def bars_study(seed: int = 0) -> dict[Any, StudyRow]:
    """Rows keyed by confounding level (float) or asymmetric name (str); symmetric rows carry VAE estimates
    (``"balanced"``: class-conditioned and balanced; ``"plain"`` at 0.9 only: Goyal et al.'s VAE)."""
    rows: dict[Any, StudyRow] = {}
    specs: list[tuple[Any, dict[str, Any]]] = [(level, {"confounding": level}) for level in LEVELS]
    specs += [(name, {"colour_given_class": table}) for name, table in ASYMMETRIC.items()]
    for key, generator in specs:
        train = Bars(NUM_TRAIN, image_size=SIZE, seed=100 + seed, **generator)
        model = train_classifier(train.images, train.labels, seed=seed)
        test = bars_colour_intervention(Bars(NUM_TEST, image_size=SIZE, seed=200 + seed, **generator))
        truth = ground_truth_cace(model, test)
        assert truth.per_example is not None
        by_class = tuple(float(truth.per_example[test.labels == k].mean()) for k in (0, 1))
        observational = conexp(model, test).value
        row = StudyRow(model, test, truth.value, by_class, observational)  # type: ignore[arg-type]
        if key in LEVELS:
            training = bars_colour_intervention(train)
            vae = fit_intervention_vae(training, seed=seed, **VAE)
            row.estimates["balanced"] = vae_estimates(model, test, vae, shape_readout=orientation_evidence)
            if key == max(LEVELS):
                plain = fit_intervention_vae(training, seed=seed, condition_on_class=False, balance=False, **VAE)
                row.estimates["plain"] = vae_estimates(model, test, plain, shape_readout=orientation_evidence)
        rows[key] = row
    return rows


def mean_absolute_error(rows: dict[Any, StudyRow], estimate: str) -> float:
    """Mean over the symmetric levels of ``|estimate − GT|``; ``estimate`` is ``"conexp"`` or ``"encdec_cace"``."""
    errors = []
    for level in LEVELS:
        row = rows[level]
        value = row.conexp if estimate == "conexp" else row.estimates["balanced"][estimate]
        errors.append(abs(value - row.gt))
    return sum(errors) / len(errors)

"""Integrated Gradients' accuracy against its step count, for AttributionCallback's IG default.

Trains SmallCNN (width 32) on ConceptWorld (2,000 images, batch 64) for two epochs and, for the
untrained model and after each epoch, compares Gauss-Legendre IG of the label logit (zero
baseline) on 64 validation images at N steps with a 256-step IG: the completeness error
``|Σ IG − (F(x) − F(0))| / |F(x) − F(0)|``, the relative L2 distance to the 256-step IG, and the
Spearman ρ of the Σ_c |IG| maps.

    PYTHONPATH=. python experiments/benchmarks/ig_steps_in_callback.py
"""

import torch
from epoch_snapshots import train_with_snapshots  # this folder is on sys.path when run as a script
from scipy.stats import spearmanr

from xai_lightning.attribution import IntegratedGradients
from xai_lightning.callbacks.probe import draw_probe

torch.set_num_threads(1)
model, datamodule, snapshots = train_with_snapshots(2, include_untrained=True)
probe = draw_probe(datamodule.val_dataloader().dataset, 64, 0)[0]
x, y = probe.images, probe.labels
for epoch, state in snapshots.items():
    model.load_state_dict(state)
    model.eval()
    reference, reference_delta = IntegratedGradients(steps=256).attribute(
        model, x, "label", labels=y, return_convergence_delta=True
    )
    gap = (reference.flatten(1).sum(1) - reference_delta).abs()  # |F(x) − F(x')|
    for steps in (8, 12, 16, 20, 24, 32, 50):
        ig, delta = IntegratedGradients(steps=steps).attribute(
            model, x, "label", labels=y, return_convergence_delta=True
        )
        completeness = delta.abs() / gap
        distance = (ig - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
        maps, reference_maps = ig.abs().sum(1).flatten(1), reference.abs().sum(1).flatten(1)
        rho = torch.tensor([spearmanr(maps[i].numpy(), reference_maps[i].numpy())[0] for i in range(len(x))])
        print(
            f"epoch {epoch} steps {steps:3d}: completeness error median {float(completeness.median()):.4f} "
            f"p90 {float(completeness.quantile(0.9)):.4f}; rel L2 to 256-step IG median {float(distance.median()):.4f} "
            f"p90 {float(distance.quantile(0.9)):.4f} max {float(distance.max()):.4f}; map Spearman min "
            f"{float(rho.min()):.4f} median {float(rho.median()):.4f}",
            flush=True,
        )

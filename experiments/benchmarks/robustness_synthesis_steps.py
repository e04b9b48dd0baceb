"""How the robustness syntheses' objectives depend on their step counts (RobustnessCallback defaults).

Trains SmallCNN (width 32) on ConceptWorld (2,000 images, batch 64) for three epochs and after each
epoch runs, on two sets of 8 validation images: the targeted morph towards every class
(success rate, mean cross-entropy towards the target) at 10-60 steps, the representation
inversion at the last spatial layer (mean and max relative representation error) at 25-200
steps, and the feature visualisation of the class logits (mean objective) at 32-256 steps.

    PYTHONPATH=. python experiments/benchmarks/robustness_synthesis_steps.py [epochs]
"""

import sys
import time

import torch
from epoch_snapshots import train_with_snapshots  # this folder is on sys.path when run as a script

from xai_lightning.robustness import invert_representation, morph_to_every_class, visualize_features

torch.set_num_threads(1)
model, datamodule, snapshots = train_with_snapshots(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
batch = next(iter(datamodule.val_dataloader()))
images = (batch[0] if isinstance(batch, (list, tuple)) else batch["image"])[:16]
for epoch, state in snapshots.items():
    model.load_state_dict(state)
    model.eval()
    for chunk in (images[:8], images[8:16]):
        for steps in (10, 15, 20, 30, 60):
            start = time.perf_counter()
            _, result = morph_to_every_class(model, chunk, 5, steps=steps)
            print(
                f"epoch {epoch} morph steps={steps:3d} success={float(result.success.float().mean()):.3f} "
                f"target CE={float(result.loss.mean()):.4f} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    for seed in (0, 1):
        for steps in (25, 50, 100, 200):
            inverted = invert_representation(
                model, images[8 * seed : 8 * seed + 8], steps=steps, generator=torch.Generator().manual_seed(seed)
            )
            error = inverted.representation_error
            print(
                f"epoch {epoch} seed {seed} inversion steps={steps:3d} error mean {float(error.mean()):.4f} "
                f"max {float(error.max()):.4f}",
                flush=True,
            )
        for steps in (32, 64, 128, 256):
            features = visualize_features(
                model, "logits", steps=steps, image_shape=(3, 32, 32), generator=torch.Generator().manual_seed(seed)
            )
            print(
                f"epoch {epoch} seed {seed} visualisation steps={steps:3d} objective mean "
                f"{float(features.activation.mean()):.3f}",
                flush=True,
            )

"""scikit-learn's bundled handwritten digits as a torch dataset: real data that needs no download."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["HandwrittenDigits"]


class HandwrittenDigits(Dataset):
    """The UCI optical digits shipped with scikit-learn (1,797 images, 8×8, 16 grey levels).

    Pixels are scaled to [0, 1] and bilinearly upsampled to ``image_size``. The split is
    stratified and seeded. Items are dicts ``{"image": (C, S, S), "label": int, "index": int}``;
    :attr:`images` and :attr:`labels` hold the whole split.
    """

    def __init__(
        self,
        split: Literal["train", "val", "all"] = "all",
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(data.target, dtype=torch.long)
        indices = torch.arange(len(labels))
        if split != "all":
            train_idx, val_idx = train_test_split(
                indices.numpy(), test_size=val_fraction, random_state=seed, stratify=labels.numpy()
            )
            indices = torch.as_tensor(train_idx if split == "train" else val_idx)
        images = images[indices]
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = images.clamp(0, 1).expand(-1, channels, -1, -1).contiguous()
        self.labels = labels[indices]
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"image": self.images[index], "label": int(self.labels[index]), "index": index}

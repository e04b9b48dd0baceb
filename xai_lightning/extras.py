"""Optional dependencies: import them where they are needed, and say which extra installs them.

``pip install xai-lightning`` installs what every callback needs. Two capabilities need more:

================  ==================================  ==========================================
extra             installs                            needed by
================  ==================================  ==========================================
``superpixels``   scikit-image                        LIME, KernelSHAP and XRAI on images
                                                      (quickshift/SLIC/Felzenszwalb segments)
``tensorboard``   tensorboard                         Lightning's ``TensorBoardLogger``
================  ==================================  ==========================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: module -> (distribution, extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "skimage": ("scikit-image", "superpixels"),
    "tensorboard": ("tensorboard", "tensorboard"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"skimage.segmentation"``); if it is missing, an ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        distribution, extra = EXTRAS.get(top, (top, None))
        how = f'pip install "xai-lightning[{extra}]"' if extra else f"pip install {distribution}"
        raise ImportError(f"{purpose} needs {distribution}, which is not installed: {how}") from error

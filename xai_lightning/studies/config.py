"""Build objects from ``class_path``/``init_args`` mappings, as LightningCLI YAML files write them.

A study config is trusted code, exactly like a LightningCLI config: ``class_path`` may name any
importable class or function, which is imported and called with ``init_args``. Run only configs
you wrote or reviewed, as you would run only Python scripts you trust.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["instantiate"]


def _import(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {path!r} must be a dotted path such as 'xai_lightning.SmallCNN'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import class_path {path!r}: {error}") from error


def instantiate(config: Any) -> Any:
    """Recursively turn ``{"class_path": ..., "init_args": {...}}`` mappings into objects.

    Lists and plain mappings are walked; everything else is returned unchanged. Nested
    ``class_path`` blocks (a network inside a LightningModule) are built first.
    """
    if isinstance(config, Mapping):
        if "class_path" in config:
            unknown = set(config) - {"class_path", "init_args"}
            if unknown:
                raise ValueError(f"Unexpected keys {sorted(unknown)} beside class_path {config['class_path']!r}")
            cls = _import(config["class_path"])
            kwargs = {key: instantiate(value) for key, value in (config.get("init_args") or {}).items()}
            try:
                return cls(**kwargs)
            except TypeError as error:
                raise TypeError(f"{config['class_path']}: {error}") from error
        return {key: instantiate(value) for key, value in config.items()}
    if isinstance(config, list):
        return [instantiate(item) for item in config]
    return config

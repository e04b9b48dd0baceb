"""Build objects from ``class_path``/``init_args`` mappings, as LightningCLI YAML files write them, and
read study configs (which may ``extends:`` another one).

A study config is trusted code, exactly like a LightningCLI config: ``class_path`` may name any
importable class or function, which is imported and called with ``init_args``. Run only configs
you wrote or reviewed, as you would run only Python scripts you trust.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["instantiate", "load_study_config", "merge_configs"]


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


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key (recursively); anything else — lists
    included (observers, seeds) — is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_study_config(path: str | Path) -> dict[str, Any]:
    """Read a study YAML. ``extends: other.yaml`` (relative to this file) starts from that config and
    applies this file's keys on top (:func:`merge_configs`), so a CI-size config restates only what
    it shrinks."""
    import yaml

    path = Path(path)
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, Mapping):
        raise TypeError(f"{str(path)!r} must hold a mapping at its top level; got {type(loaded).__name__}")
    config = dict(loaded)
    base = config.pop("extends", None)
    if base is None:
        return config
    base_path = (path.parent / str(base)).resolve()
    if base_path == path.resolve():
        raise ValueError(f"{str(path)!r} extends itself.")
    return merge_configs(load_study_config(base_path), config)

"""A study config, checked and expanded into the runs to train: arms × seeds.

A study config (YAML) names the data, the model, the trainer arguments, the observing callbacks
every run gets, and the *variants* — each a list of extra callbacks that change training (e.g.
``AdversarialTrainingCallback``). It is expanded here:

* ``seeds: [0, 1, 2]`` — every variant is trained once per seed (a legacy ``seed: 0`` means
  ``seeds: [0]``). The runs of one seed form a pair: the same initial weights (the seed is set
  before the model is built) and the same data order (the data module shuffles with its own
  generator seeded with the seed, ``shuffle_seed``, so an arm that draws extra random numbers —
  PGD's random starts — still sees the batches in the same order). A callback of a variant that
  takes a ``seed`` argument and does not set it gets the study seed.
* ``epsilons: [0.5, 1.0, 2.0]`` — a sweep: every variant whose callbacks take ``eps`` becomes one
  arm per ε (``robust_eps0.5``, …); the arm at the variant's own ε keeps the variant's name, so the
  verdict compares it. Each measure is also drawn against ε (the robustness dial).

The config's fingerprint (:attr:`StudyPlan.config_id`) covers everything but the seed list, the
output directory and the progress settings, so runs of one study with more seeds still match.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xai_lightning.studies.verdict import VerdictSpec, parse_verdict

__all__ = ["Arm", "StudyPlan", "plan_study"]

REQUIRED_KEYS = ("name", "data", "model", "variants")
KNOWN_KEYS = set(REQUIRED_KEYS) | {
    "seed",
    "seeds",
    "epsilons",
    "output_dir",
    "trainer",
    "observers",
    "report",
    "verdict",
    "wandb_project",
    "progress",
}
#: Keys left out of the config's fingerprint: they do not change what a run computes.
UNFINGERPRINTED = ("seed", "seeds", "output_dir", "progress", "wandb_project")


@dataclass(frozen=True)
class Arm:
    """One trained arm: a variant, possibly at one ε of a sweep.

    Attributes:
        name: the arm's name (run names, directories, report labels).
        variant: the config variant it comes from.
        callbacks: its extra callbacks' ``class_path``/``init_args`` configs (ε applied).
        epsilon: its adversarial-training radius (None: no callback of the arm takes ``eps``).
    """

    name: str
    variant: str
    callbacks: tuple[dict[str, Any], ...]
    epsilon: float | None


@dataclass(frozen=True)
class StudyPlan:
    config: dict[str, Any]
    name: str
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    verdict: VerdictSpec | None
    config_id: str
    epsilons: tuple[float, ...] = ()

    @property
    def runs(self) -> list[tuple[int, Arm]]:
        """(seed, arm) in training order: seed by seed, so every pair is complete early."""
        return [(seed, arm) for seed in self.seeds for arm in self.arms]


def _class(path: str) -> Any:
    module_name, _, attribute = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"Cannot import class_path {path!r}: {error}") from None


def _accepts(cls: Any, argument: str) -> bool:
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters


def fingerprint(config: Mapping[str, Any]) -> str:
    """12 hex digits identifying the config (without seeds, output directory and progress settings)."""
    kept = {key: value for key, value in config.items() if key not in UNFINGERPRINTED}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _seeds(config: Mapping[str, Any]) -> tuple[int, ...]:
    if "seeds" in config and "seed" in config:
        raise ValueError("Give either seeds: [...] or the legacy seed: <int>, not both.")
    raw = config.get("seeds", [config.get("seed", 0)])
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"seeds must be a non-empty list of integers, e.g. seeds: [0, 1, 2]; got {raw!r}")
    for seed in raw:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be non-negative integers; got {seed!r} in {raw}")
    duplicate = next((seed for seed in raw if raw.count(seed) > 1), None)
    if duplicate is not None:
        raise ValueError(
            f"seeds has a duplicate: {duplicate} appears {raw.count(duplicate)} times in {raw}; "
            "each seed is one pair of runs, list it once."
        )
    return tuple(raw)


def _epsilon_of(callbacks: Sequence[Mapping[str, Any]]) -> tuple[int | None, float | None]:
    """Index and ε of the first callback of a variant that takes ``eps`` (its value or the default)."""
    for index, callback in enumerate(callbacks):
        cls = _class(callback["class_path"])
        if _accepts(cls, "eps"):
            given = (callback.get("init_args") or {}).get("eps")
            if given is None:
                given = inspect.signature(cls.__init__).parameters["eps"].default
            return index, float(given)
    return None, None


def _arm_name(variant: str, epsilon: float) -> str:
    return f"{variant}_eps{epsilon:g}"


def _arms(config: Mapping[str, Any], epsilons: tuple[float, ...]) -> tuple[Arm, ...]:
    arms: list[Arm] = []
    swept = False
    for variant, extra in config["variants"].items():
        callbacks = [copy.deepcopy(dict(c)) for c in (extra or [])]
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Mapping) or "class_path" not in callback:
                raise ValueError(
                    f"variants.{variant}[{index}] must be a {{class_path, init_args}} block; got {callback!r}"
                )
        position, epsilon = _epsilon_of(callbacks)
        if not epsilons or position is None:
            arms.append(Arm(str(variant), str(variant), tuple(callbacks), epsilon))
            continue
        swept = True
        if epsilon not in epsilons:
            raise ValueError(
                f"variant {variant!r} trains at eps {epsilon:g}, which is not among epsilons {list(epsilons)}; add it "
                "(the verdict compares the variant at its own eps) or change the variant's eps."
            )
        for value in epsilons:
            changed = copy.deepcopy(callbacks)
            changed[position].setdefault("init_args", {})
            changed[position]["init_args"] = {**(changed[position]["init_args"] or {}), "eps": value}
            arms.append(
                Arm(
                    str(variant) if value == epsilon else _arm_name(str(variant), value),
                    str(variant),
                    tuple(changed),
                    value,
                )
            )
    if epsilons and not swept:
        raise ValueError(
            f"epsilons {list(epsilons)} are given, but no variant has a callback that takes eps "
            "(e.g. AdversarialTrainingCallback); remove epsilons or add such a variant."
        )
    names = [arm.name for arm in arms]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ValueError(f"Two arms are named {clash!r}; rename the variant that clashes with a sweep arm.")
    return tuple(arms)


def _namespaces(config: Mapping[str, Any], arms: Sequence[Arm]) -> dict[str, str]:
    found: dict[str, str] = {}
    blocks = list(config.get("observers") or []) + [c for arm in arms for c in arm.callbacks]
    for index, block in enumerate(blocks):
        if not isinstance(block, Mapping) or "class_path" not in block:
            raise ValueError(f"observers[{index}] must be a {{class_path, init_args}} block; got {block!r}")
        cls = _class(block["class_path"])
        namespace = getattr(cls, "namespace", None)
        if isinstance(namespace, str):
            found[namespace] = cls.__name__
    return found


def plan_study(config: Mapping[str, Any]) -> StudyPlan:
    """Check a study config and expand it into arms and seeds (errors name the offending entry)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"A study config is a mapping (a YAML file's top level); got {type(config).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(
            f"The study config lacks {missing}; it needs {list(REQUIRED_KEYS)} (see xai_lightning.studies)."
        )
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"The study config has unknown key(s) {unknown}; known keys: {sorted(KNOWN_KEYS)}.")
    if not isinstance(config["variants"], Mapping) or not config["variants"]:
        raise ValueError("variants must map each variant's name to its list of extra callbacks (may be empty).")
    seeds = _seeds(config)
    raw_eps = config.get("epsilons") or []
    if not isinstance(raw_eps, list) or any(
        isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0 for e in raw_eps
    ):
        raise ValueError(f"epsilons must be a list of positive numbers, e.g. [0.5, 1.0, 2.0]; got {raw_eps!r}")
    epsilons = tuple(float(e) for e in raw_eps)
    if len(set(epsilons)) != len(epsilons):
        duplicate = next(e for e in epsilons if epsilons.count(e) > 1)
        raise ValueError(f"epsilons has a duplicate: {duplicate:g} appears twice in {list(raw_eps)}.")
    arms = _arms(config, epsilons)
    verdict = parse_verdict(config.get("verdict"), [arm.name for arm in arms], _namespaces(config, arms))
    return StudyPlan(
        config=copy.deepcopy(dict(config)),
        name=str(config["name"]),
        seeds=seeds,
        arms=arms,
        verdict=verdict,
        config_id=fingerprint(config),
        epsilons=tuple(sorted(epsilons)),
    )

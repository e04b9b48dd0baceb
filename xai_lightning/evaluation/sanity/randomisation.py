"""Model-parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks
for Saliency Maps", NeurIPS 2018) on a private copy of the model.

The layers are the modules that own parameters or buffers and can re-initialise themselves
(``reset_parameters``: convolutions, linear layers, normalisation layers), from the logits down
(reverse definition order, as Quantus' "top_down"):

* ``"cascading"``: step k re-initialises the top k layers (one more each step);
* ``"independent"``: step k re-initialises layer k alone, every other layer trained.

The copy is a deep copy made once; nothing is shared with the model (no parameter, buffer or
gradient storage), so the training model is never touched. Each re-initialisation draws from
the global torch generator seeded with ``seed`` inside :func:`~xai_lightning.core.isolated_rng`,
so the training's random stream is untouched too. (Quantus seeds ``seed + 1`` before every
layer: our ``seed=s + 1`` reproduces its ``seed=s``.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from xai_lightning.core import isolated_rng, normalize_layer_name, unwrap_model

__all__ = ["RandomisationMode", "private_copy", "randomisable_layers", "randomised_copies"]

RandomisationMode = Literal["cascading", "independent"]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Dotted names of the layers that can be re-initialised, from the logits down."""
    network = unwrap_model(model)
    names = []
    for name, module in network.named_modules():
        if not name or not callable(getattr(module, "reset_parameters", None)):
            continue
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            names.append(name)
    return names[::-1]


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the (unwrapped) model that shares no tensor storage with it.

    A LightningModule's trainer reference is kept, not copied (a copied trainer would drag the
    data loaders and loggers along).
    """
    network = unwrap_model(model)
    memo: dict[int, object] = {}
    for attribute in ("_trainer", "_fabric"):
        value = network.__dict__.get(attribute)
        if value is not None:
            memo[id(value)] = value
    with torch.no_grad():
        duplicate = copy.deepcopy(network, memo)
    for tensor in list(duplicate.parameters()) + list(duplicate.buffers()):
        tensor.grad = None
    return duplicate


def _reinitialise(module: nn.Module, seed: int) -> None:
    with isolated_rng(), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        module.reset_parameters()  # type: ignore[operator]


def randomised_copies(
    model: nn.Module,
    mode: RandomisationMode = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer, randomised copy)`` for each randomisation step.

    Args:
        mode: ``"cascading"`` or ``"independent"``.
        layers: the layers to randomise, top first (default :func:`randomisable_layers`); a name
            that cannot be re-initialised fails listing the valid ones.
        seed: seed of every re-initialisation.

    The same copy object is yielded at every step (re-initialised further in cascading mode,
    restored and re-initialised elsewhere in independent mode): use it before the next step.
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent'; got {mode!r}")
    valid = randomisable_layers(model)
    order = valid if layers is None else [normalize_layer_name(name) for name in layers]
    unknown = [name for name in order if name not in valid]
    if unknown:
        raise ValueError(
            f"Cannot randomise {unknown}: not layers with parameters and reset_parameters(). "
            f"Randomisable layers, top first: {valid}"
        )
    duplicate = private_copy(model)
    modules = dict(duplicate.named_modules())
    trained = (
        {name: {key: value.detach().clone() for key, value in modules[name].state_dict().items()} for name in order}
        if mode == "independent"
        else {}
    )
    previous: str | None = None
    for name in order:
        if mode == "independent" and previous is not None:
            modules[previous].load_state_dict(trained[previous])
        _reinitialise(modules[name], seed)
        previous = name
        yield name, duplicate

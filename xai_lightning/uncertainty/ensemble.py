"""Deep ensembles (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017), vectorised.

:class:`VectorisedEnsemble` holds ``K`` members of one architecture as stacked parameters and
buffers (leading dimension ``K``, from ``torch.func.stack_module_state``) and evaluates all of
them in one call — not a Python loop of ``K`` forwards — in one of two layouts
(:attr:`VectorisedEnsemble.layout`):

* ``"packed"``: the members run as one wide network with member-major channels (grouped
  convolutions, per-channel batch norm, batched matrix products;
  :mod:`~xai_lightning.uncertainty.packed_ensemble`). Chosen automatically when a member is a
  plain chain of convolutions, batch norms, activations, pooling, dropout, a flatten and linear
  layers (``SmallCNN``): it was faster than ``vmap`` in every configuration measured on CPU
  (K = 5 SmallCNN training steps, widths 4-32, 16-32 px: 0.5-0.7x the vmap time;
  ``experiments/benchmarks/uncertainty.py``). Not yet measured on a GPU.
* ``"vmap"``: ``torch.func.functional_call`` under ``torch.func.vmap`` (any architecture:
  residuals, attention, custom forwards).

Members stay independent in both: each has its own weights, BatchNorm statistics (updated in
training mode, per member) and dropout masks (vmap: ``randomness="different"``; packed: every
member owns its channels, so one dropout call draws independent masks), and gradients of a sum of
per-member losses reach each member exactly as its own loss would.

Disagreement between members is the ensemble's epistemic uncertainty: the mutual information
between the prediction and the member (:func:`~xai_lightning.uncertainty.mutual_information`
over ``softmax(member_logits)``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from xai_lightning.uncertainty.packed_ensemble import UnsupportedForPacking, packed_forward, packing_plan

__all__ = ["VectorisedEnsemble", "reinitialise"]


def reinitialise(module: nn.Module) -> nn.Module:
    """Draw fresh initial weights for every submodule that has ``reset_parameters`` (in place; global RNG)."""
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


def _owner(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    return module, leaf


class VectorisedEnsemble(nn.Module):
    """``K`` networks of one architecture evaluated together: ``forward(x) → (K, B, ...)``.

    Args:
        members: ``K ≥ 2`` modules with identical parameter and buffer names and shapes (e.g.
            ``[SmallCNN(width=8) for _ in range(5)]``); their current weights are copied.
        layout: ``"auto"`` (packed when the architecture allows it, else vmap), ``"packed"`` (an
            error naming the unsupported operation if it cannot be packed) or ``"vmap"``.
        channels_last: packed layout only: run the 2-D convolutions (and the batch norms and pools
            after them) on channels-last activations. ``None``: on CPU inputs, where oneDNN's grouped
            convolutions are faster so (a K = 5 SmallCNN step took 0.65-0.9x the NCHW time at
            widths 4-32, ``experiments/benchmarks/uncertainty.py``). The values agree with NCHW up to
            float rounding; only where a pre-activation sits within rounding of a ReLU/max-pool kink
            can a gradient element differ, as between any two convolution kernels.

    :attr:`layout` says which is used (``"packed"`` or ``"vmap"``); :attr:`layout_reason` why vmap
    was chosen automatically (``None`` otherwise). Both give the same outputs, running statistics
    and gradients up to float rounding; dropout masks are independent per member in both, but
    drawn differently from the global generator (the same distribution, not the same masks).

    The stacked tensors live in :attr:`stacked`, a copy of the first member whose every parameter
    and buffer has a leading member dimension (``stacked.classifier.weight`` is ``(K, out, in)``),
    so state dicts are readable and optimisers, ``.to()``, DDP and checkpoints treat them as
    ordinary parameters. :attr:`stacked` is storage: calling it directly fails; call the
    ensemble. Training mode follows each submodule of :attr:`stacked`
    (``ensemble.train()``/``.eval()`` as usual).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        layout: Literal["auto", "packed", "vmap"] = "auto",
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(
                f"An ensemble needs K >= 2 members to disagree; got K={len(members)}. "
                f"Use num_members >= 2 (Lakshminarayanan et al. use 5)."
            )
        reference = {name: tuple(t.shape) for name, t in _tensors(members[0])}
        for index, member in enumerate(members[1:], start=1):
            shapes = {name: tuple(t.shape) for name, t in _tensors(member)}
            if shapes != reference:
                raise ValueError(
                    f"Ensemble member {index} differs from member 0 in its parameters/buffers; "
                    f"all members must share one architecture"
                )
        if layout not in ("auto", "packed", "vmap"):
            raise ValueError(f"layout must be 'auto', 'packed' or 'vmap'; got {layout!r}")
        params, buffers = stack_module_state(members)
        self.num_members = len(members)
        self.channels_last = channels_last
        self.stacked = copy.deepcopy(members[0])
        for name, value in params.items():
            owner, leaf = _owner(self.stacked, name)
            setattr(owner, leaf, nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad))
        for name, value in buffers.items():
            owner, leaf = _owner(self.stacked, name)
            owner._buffers[leaf] = value.detach().clone()
        # The module the stacked tensors are plugged into, one member at a time under vmap. Kept out of
        # the module tree (a tuple), so its own (meta) tensors are neither saved nor moved.
        self._template = (copy.deepcopy(members[0]).to("meta"),)
        self.layout: Literal["packed", "vmap"] = "vmap"
        self.layout_reason: str | None = None
        self._plan: list = []
        if layout != "vmap":
            try:
                self._plan = packing_plan(self.template)
                self.layout = "packed"
            except UnsupportedForPacking as error:
                if layout == "packed":
                    raise UnsupportedForPacking(
                        f"layout='packed' is impossible for this member architecture: {error}. "
                        f"Use layout='auto' or 'vmap'."
                    ) from None
                self.layout_reason = str(error)

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def _sync_modes(self) -> None:
        for stored, used in zip(self.stacked.modules(), self.template.modules()):
            used.training = stored.training

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """Every member on the same inputs: ``(K, B, ...)`` outputs (inputs shared, not repeated)."""
        self._sync_modes()
        if self.layout == "packed" and len(args) == 1:
            x = args[0]
            channels_last = x.device.type == "cpu" if self.channels_last is None else self.channels_last
            return packed_forward(self._plan, self.stacked, self.num_members, x, channels_last)
        params = dict(self.stacked.named_parameters())
        buffers = dict(self.stacked.named_buffers())
        template = self.template

        def one_member(p: dict, b: dict, *inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(template, (p, b), inputs)

        in_dims = (0, 0) + (None,) * len(args)
        return vmap(one_member, in_dims=in_dims, randomness="different")(params, buffers, *args)

    def member(self, index: int) -> nn.Module:
        """A standalone copy of member ``index`` (ordinary module, weights copied out of the stack)."""
        if not 0 <= index < self.num_members:
            raise IndexError(f"member {index} out of range 0..{self.num_members - 1}")
        module = copy.deepcopy(self.template).to_empty(device=next(self.stacked.parameters()).device)
        state = {name: tensor[index].detach().clone() for name, tensor in _tensors(self.stacked)}
        module.load_state_dict(state, strict=False)
        for name, tensor in module.named_buffers():
            if name in state:
                tensor.copy_(state[name])
        for stored, copied in zip(self.stacked.modules(), module.modules()):
            copied.training = stored.training
        return module


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())

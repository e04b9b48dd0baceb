"""Temperature scaling (Guo, Pleiss, Sun & Weinberger 2017): one scalar T > 0 that calibrates softmax(z / T).

T minimises the negative log-likelihood of held-out labels; it does not change which class is
predicted (accuracy is unchanged), only how confident the probabilities are (T > 1 softens an
overconfident model). Fitted with L-BFGS on ``log T`` (so T stays positive) in float64.

:func:`cross_fitted_probs` gives honest probabilities for reporting calibration *after* scaling on
the same probe set the temperature is fitted on: each half is scaled with the temperature
fitted on the other half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TemperatureFit", "cross_fitted_probs", "fit_temperature"]


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the NLL (nats, mean over examples) before and after scaling."""

    temperature: float
    nll_before: float
    nll_after: float


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, bounds: tuple[float, float] = (1e-2, 1e2)
) -> TemperatureFit:
    """Fit ``T`` minimising ``NLL(softmax(logits / T), labels)``: ``logits (N, K)``, ``labels (N,)``.

    Runs under its own ``torch.enable_grad()`` (also inside ``no_grad``/``inference_mode`` loops)
    and never touches a model; the result is clipped to ``bounds`` (a degenerate probe — all
    predictions right with huge margins — otherwise drives T towards 0).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"fit_temperature needs logits (N, K) and labels (N,); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("fit_temperature needs at least one example")
    with torch.inference_mode(False), torch.enable_grad():
        z = logits.detach().clone().double()
        y = labels.detach().clone().long().to(z.device)
        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(log_t.detach().exp().clamp(*bounds))
        nll_before = float(F.cross_entropy(z, y))
        nll_after = float(F.cross_entropy(z / temperature, y))
    return TemperatureFit(temperature=temperature, nll_before=nll_before, nll_after=nll_after)


def cross_fitted_probs(logits: torch.Tensor, labels: torch.Tensor, folds: int = 2) -> torch.Tensor:
    """``softmax(logits / T_f)`` per row, ``T_f`` fitted on the other folds (rows ``i ≡ f mod folds``): ``(N, K)``.

    The calibration of these probabilities is an out-of-sample estimate of what temperature
    scaling achieves; evaluating on the rows the temperature was fitted on would flatter it.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2; got {folds}")
    n = logits.shape[0]
    if n < folds:
        raise ValueError(f"cross-fitting over {folds} folds needs at least {folds} examples; got {n}")
    fold = torch.arange(n, device=logits.device) % folds
    scaled = torch.empty_like(logits, dtype=torch.float64)
    for f in range(folds):
        held_out = fold == f
        fit = fit_temperature(logits[~held_out], labels[~held_out])
        scaled[held_out] = logits[held_out].double() / fit.temperature
    return scaled.softmax(-1).to(logits.dtype)

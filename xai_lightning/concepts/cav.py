"""Concept Activation Vectors (Kim et al., ICML 2018, "Interpretability Beyond Feature Attribution:
Quantitative Testing with Concept Activation Vectors (TCAV)").

A CAV is the unit normal of a linear boundary that separates a layer's (flattened) activations
of concept examples from those of random examples, oriented towards the concept. Following the
paper and the tcav reference code: concept and random sets are balanced (equal counts), a third
of each is held out to report the CAV's accuracy, and the classifier is either

* ``"logistic"``: L2-regularised logistic regression, ``½‖w‖² + C Σ log(1 + e^{-y(w·x+b)})``
  (scikit-learn's ``LogisticRegression`` objective, ``C = 1``), or
* ``"hinge"``: the linear SVM objective of tcav's ``SGDClassifier(alpha=0.01, loss="hinge")``,
  ``α/2 ‖w‖² + mean max(0, 1 - y(w·x+b))``.

**Many CAVs in one batched solve.** Every problem (concept × random set × layer) is a
classifier over the same few hundred activation rows, so we never fit in the ``D``-dimensional
activation space (``D`` is thousands). Both objectives are L2-regularised, hence their solution
lies in the span of the training rows (representer theorem): with the Gram matrix
``K = X Xᵀ = U Λ Uᵀ`` of a problem's ``n`` training rows, ``Z = U Λ^{1/2}`` is an isometric
``n``-dimensional embedding of them (``Z Zᵀ = K``, ``‖β‖ = ‖w‖`` for ``w = Xᵀ U Λ^{-1/2} β``), so
the exact solution of the problem in ``Z`` maps back to the exact ``w``. The Gram matrix of all
unique rows (concepts and random sets) is computed once per layer; then all problems of all
layers are solved together as batched ``n``-dimensional problems — damped Newton for the
logistic loss, full-batch Pegasos subgradient steps (step ``1/(α t)``, tail-averaged) for the
hinge loss. ``backend="sklearn"`` fits scikit-learn's own classifiers one at a time instead
(for parity checks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch

__all__ = ["CAVBackend", "CAVClassifier", "CAVs", "split_balanced", "train_cavs", "train_cavs_indexed"]

CAVClassifier = Literal["logistic", "hinge"]
CAVBackend = Literal["torch", "sklearn"]


@dataclass(frozen=True)
class CAVs:
    """A batch of ``M`` trained CAVs in one layer's ``D``-dimensional (flattened) activation space.

    Attributes:
        vectors: ``(M, D)`` float32 unit vectors pointing from the random (negative) set towards
            the concept (positive) set.
        weights: ``(M, D)`` the classifier's raw weight vectors (``vectors`` = weights / norm).
        intercepts: ``(M,)`` the classifier's intercepts (decision ``weights·x + intercept > 0``
            means "concept").
        accuracy: ``(M,)`` accuracy on the held-out, balanced third of the examples.
    """

    vectors: torch.Tensor
    weights: torch.Tensor
    intercepts: torch.Tensor
    accuracy: torch.Tensor

    def __len__(self) -> int:
        return self.vectors.shape[0]


@contextlib.contextmanager
def _single_threaded(device: torch.device):
    """Many tiny batched matrices gain nothing from intra-op threads on a CPU, and on a busy
    machine thread hand-offs cost ~30× the work; run them on one thread, then restore."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def split_balanced(count: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/test split of ``count`` rows of one class: ``(train_rows, test_rows)``.

    ``round(count · test_fraction)`` rows are held out. The same permutation is used for every
    problem (it depends on ``count`` and ``seed`` only), so a concept's CAV does not depend on
    which other concepts are trained beside it, nor on their order.
    """
    held_out = int(round(count * test_fraction))
    if count - held_out < 2 or held_out < 1:
        raise ValueError(
            f"Too few examples for the CAV train/test split: {count} per set with test_fraction="
            f"{test_fraction:.3g} leaves {count - held_out} to train and {held_out} to test; give at least "
            f"{max(3, math.ceil(2 / max(1 - test_fraction, 1e-9)) + 1)} examples per concept and random set."
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held_out:].sort().values, order[:held_out].sort().values


def _embed(gram: torch.Tensor, relative_eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Isometric embedding ``Z (M, n, n)`` of rows with Gram ``(M, n, n)`` and the back-map ``U Λ^{-1/2}``."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    keep = eigenvalues > relative_eps * eigenvalues.amax(dim=-1, keepdim=True).clamp_min(1e-300)
    root = torch.where(keep, eigenvalues.clamp_min(0).sqrt(), torch.zeros_like(eigenvalues))
    inverse_root = torch.where(keep, 1.0 / root.clamp_min(1e-300), torch.zeros_like(eigenvalues))
    return eigenvectors * root.unsqueeze(-2), eigenvectors * inverse_root.unsqueeze(-2)


def _logistic_objective(z, y, beta, bias, c):
    """Objective of candidate solutions ``beta (M, S, p)``, ``bias (M, S)`` → ``(M, S)``."""
    margins = y.unsqueeze(1) * (beta @ z.transpose(1, 2) + bias.unsqueeze(-1))
    return 0.5 * beta.square().sum(-1) + c * torch.nn.functional.softplus(-margins).sum(-1)


def _fit_logistic(
    z: torch.Tensor, y: torch.Tensor, c: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton on ``½‖β‖² + C Σ log(1+e^{-y(Zβ+b)})``, batched over ``M``; intercept unpenalised."""
    m, n, p = z.shape
    like: dict[str, Any] = {"dtype": z.dtype, "device": z.device}
    design = torch.cat([z, torch.ones(m, n, 1, **like)], dim=2)  # (M, n, p+1)
    theta = torch.zeros(m, p + 1, **like)
    penalty = torch.ones(p + 1, **like)
    penalty[-1] = 0.0
    steps = 0.5 ** torch.arange(12, **like)  # candidate step lengths of the line search
    for _ in range(max(max_iter, 1)):
        scores = (design @ theta.unsqueeze(-1)).squeeze(-1)
        probability = torch.sigmoid(-y * scores)  # σ(-y s)
        gradient = penalty * theta - c * (design.transpose(1, 2) @ (y * probability).unsqueeze(-1)).squeeze(-1)
        curvature = probability * (1 - probability)
        hessian = torch.diag_embed(penalty.expand(m, -1)) + c * design.transpose(1, 2) @ (
            curvature.unsqueeze(-1) * design
        )
        hessian = hessian + 1e-10 * torch.eye(p + 1, **like)
        direction = -torch.linalg.solve(hessian, gradient.unsqueeze(-1)).squeeze(-1)
        # Backtracking (Armijo) over all candidate steps at once: take the longest that decreases enough.
        candidates = theta.unsqueeze(1) + steps.view(1, -1, 1) * direction.unsqueeze(1)  # (M, S, p+1)
        current = _logistic_objective(z, y, theta[:, None, :p], theta[:, None, p], c).squeeze(1)
        trial = _logistic_objective(z, y, candidates[..., :p], candidates[..., p], c)
        decrease = (gradient * direction).sum(-1, keepdim=True) * steps.view(1, -1) * 1e-4
        accept = trial <= current.unsqueeze(1) + decrease
        first = torch.where(accept.any(1), accept.float().argmax(1), torch.full((m,), len(steps) - 1, device=z.device))
        chosen = steps[first].unsqueeze(1) * direction
        theta = theta + chosen
        if float(chosen.abs().amax()) < tol * max(1.0, float(theta.abs().amax())):
            break
    return theta[:, :p], theta[:, p]


def _fit_hinge(
    z: torch.Tensor, y: torch.Tensor, alpha: float, max_iter: int, tol: float = 1e-3, window: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pegasos (Shalev-Shwartz et al. 2007) full-batch subgradient descent on
    ``α/2 ‖β‖² + mean max(0, 1 - y(Zβ+b))``, batched over ``M``.

    The answer is the average of the iterates of the latest window of ``window`` steps; like
    scikit-learn's SGD (``tol``), it stops when a window improves no problem's objective by more
    than ``tol`` (relative), or after ``max_iter`` steps.
    """
    m, n, p = z.shape
    dtype = z.dtype
    # Subgradient steps need no float64; in float32 each step costs half.
    design = torch.cat([z, torch.ones(m, n, 1, dtype=dtype, device=z.device)], dim=2).float()  # (M, n, p+1)
    labels = y.float()
    theta = torch.zeros(m, 1, p + 1, device=z.device)
    window_sum = torch.zeros_like(theta)
    shrink_mask = torch.ones(p + 1, device=z.device)
    shrink_mask[-1] = 0.0  # the intercept is not regularised

    def objective(candidate: torch.Tensor) -> torch.Tensor:
        margins = labels * (design * candidate).sum(-1)
        return 0.5 * alpha * candidate[..., :p].square().sum((1, 2)) + (1 - margins).clamp_min(0).mean(1)

    best, best_value = theta.clone(), objective(theta)
    for step in range(1, max_iter + 1):
        rate = 1.0 / (alpha * (step + 1.0))
        # Batched matrix-vector products as multiply-and-sum: 4× faster than bmm on a CPU here.
        scores = (design * theta).sum(-1)
        active = ((labels * scores) < 1).float() * labels  # y_i where the hinge is active
        theta = theta * (1 - rate * alpha * shrink_mask) + (rate / n) * (design * active.unsqueeze(-1)).sum(
            1, keepdim=True
        )
        window_sum += theta
        if step % window == 0 or step == max_iter:
            average = window_sum / (step - (step - 1) // window * window)
            value = objective(average)
            improved = value < best_value
            progress = ((best_value - value) / best_value.abs().clamp_min(1e-12)).amax()
            best = torch.where(improved.view(-1, 1, 1), average, best)
            best_value = torch.minimum(value, best_value)
            window_sum.zero_()
            if step >= 2 * window and float(progress) < tol:
                break
    theta = best.squeeze(1).to(dtype)
    return theta[:, :p], theta[:, p]


def _fit_sklearn(
    x: torch.Tensor,
    y: torch.Tensor,
    classifier: CAVClassifier,
    c: float,
    alpha: float,
    max_iter: int,
    tol: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scikit-learn fit per problem (the reference, for parity): ``x (M, n, D)``, ``y (M, n)`` ±1."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    weights, intercepts = [], []
    for features, labels in zip(x.cpu().numpy(), (y.cpu().numpy() > 0).astype(int)):
        if classifier == "logistic":
            model = LogisticRegression(C=c, max_iter=max_iter, tol=tol)
        else:
            model = SGDClassifier(loss="hinge", alpha=alpha, max_iter=max_iter, tol=tol, random_state=seed)
        model.fit(features, labels)
        weights.append(torch.as_tensor(model.coef_[0]))
        intercepts.append(float(model.intercept_[0]))
    return torch.stack(weights).to(x.dtype), torch.tensor(intercepts, dtype=x.dtype)


@overload
def train_cavs_indexed(
    rows: torch.Tensor,
    positive_rows: torch.Tensor,
    negative_rows: torch.Tensor,
    *,
    classifier: CAVClassifier = "logistic",
    backend: CAVBackend = "torch",
    test_fraction: float = 1 / 3,
    seed: int = 0,
    c: float = 1.0,
    alpha: float = 0.01,
    max_iter: int | None = None,
    tol: float = 1e-3,
) -> CAVs: ...


@overload
def train_cavs_indexed(
    rows: Mapping[str, torch.Tensor],
    positive_rows: torch.Tensor,
    negative_rows: torch.Tensor,
    *,
    classifier: CAVClassifier = "logistic",
    backend: CAVBackend = "torch",
    test_fraction: float = 1 / 3,
    seed: int = 0,
    c: float = 1.0,
    alpha: float = 0.01,
    max_iter: int | None = None,
    tol: float = 1e-3,
) -> dict[str, CAVs]: ...


def train_cavs_indexed(
    rows: Mapping[str, torch.Tensor] | torch.Tensor,
    positive_rows: torch.Tensor,
    negative_rows: torch.Tensor,
    *,
    classifier: CAVClassifier = "logistic",
    backend: CAVBackend = "torch",
    test_fraction: float = 1 / 3,
    seed: int = 0,
    c: float = 1.0,
    alpha: float = 0.01,
    max_iter: int | None = None,
    tol: float = 1e-3,
) -> dict[str, CAVs] | CAVs:
    """Train ``M`` CAVs per layer whose examples are rows of one shared activation matrix per layer.

    Args:
        rows: layer name → ``(N, D_layer)`` activations of every unique example (concept and
            random images), or one such tensor. The Gram matrix ``(N, N)`` of each layer is
            computed once and shared by all problems.
        positive_rows: ``(M, n)`` long, the concept examples of each problem (indices into rows).
        negative_rows: ``(M, n)`` long, the random (negative) examples; the same ``n`` (balanced).
        classifier: ``"logistic"`` (default) or ``"hinge"`` (tcav's SGD hinge loss).
        backend: ``"torch"`` (batched, exact) or ``"sklearn"`` (one fit per problem, for parity).
        test_fraction: held-out fraction of each set (default 1/3, as the paper).
        seed: seed of the train/test split (shared by every problem) and of sklearn's SGD.
        c: inverse regularisation of the logistic loss (scikit-learn's ``C``).
        alpha: regularisation of the hinge loss (tcav: 0.01).
        max_iter: iterations (default 100 Newton steps for logistic, 1000 for hinge as tcav).
        tol: stopping tolerance (Newton step size relative to the solution).

    Returns:
        :class:`CAVs` per layer (or one, when ``rows`` is a tensor), vectors in problem order.
    """
    single = isinstance(rows, torch.Tensor)
    layers: dict[str, torch.Tensor] = {"": rows} if isinstance(rows, torch.Tensor) else dict(rows)
    if classifier not in ("logistic", "hinge"):
        raise ValueError(f"classifier must be 'logistic' or 'hinge'; got {classifier!r}")
    if backend not in ("torch", "sklearn"):
        raise ValueError(f"backend must be 'torch' or 'sklearn'; got {backend!r}")
    positive_rows = torch.as_tensor(positive_rows, dtype=torch.long)
    negative_rows = torch.as_tensor(negative_rows, dtype=torch.long)
    if positive_rows.dim() != 2 or positive_rows.shape != negative_rows.shape:
        raise ValueError(
            "positive_rows and negative_rows must both be (M, n) with the same n (balanced sets); got "
            f"{tuple(positive_rows.shape)} and {tuple(negative_rows.shape)}"
        )
    m, n = positive_rows.shape
    train, test = split_balanced(n, test_fraction, seed)
    max_iter = max_iter if max_iter is not None else (100 if classifier == "logistic" else 1000)
    train_index = torch.cat([positive_rows[:, train], negative_rows[:, train]], dim=1)  # (M, t)
    test_index = torch.cat([positive_rows[:, test], negative_rows[:, test]], dim=1)
    y_train = torch.cat([torch.ones(len(train)), -torch.ones(len(train))]).double().expand(m, -1)
    y_test = torch.cat([torch.ones(len(test)), -torch.ones(len(test))]).double().expand(m, -1)

    results: dict[str, CAVs] = {}
    if backend == "sklearn":
        for name, activations in layers.items():
            flat = activations.reshape(activations.shape[0], -1).double().cpu()
            weights, intercepts = _fit_sklearn(flat[train_index], y_train, classifier, c, alpha, max_iter, tol, seed)
            results[name] = _finish(flat, weights, intercepts, test_index, y_test, activations.device)
        return results[""] if single else results

    # Embed every layer's problems in their n-dimensional training span, then solve all at once,
    # on the activations' device.
    embeddings, back_maps, crosses = [], [], []
    for activations in layers.values():
        flat = activations.reshape(activations.shape[0], -1)
        train_rows, test_rows = train_index.to(flat.device), test_index.to(flat.device)
        problem_gram, cross = problem_grams(flat, train_rows, test_rows)
        with _single_threaded(problem_gram.device):
            z, back = _embed(problem_gram, relative_eps=1e-6)
        embeddings.append(z)
        back_maps.append(back)
        crosses.append(cross)
    z_all = torch.cat(embeddings)
    y_all = y_train.to(z_all.device).repeat(len(layers), 1)
    with _single_threaded(z_all.device):
        if classifier == "logistic":
            beta, bias = _fit_logistic(z_all, y_all, c, max_iter, tol)
        else:
            beta, bias = _fit_hinge(z_all, y_all, alpha, max_iter, tol)
    for index, (name, activations) in enumerate(layers.items()):
        rows_of_layer = slice(index * m, (index + 1) * m)
        # w = Σ_i a_i x_i over the problem's training rows, with a = U Λ^{-1/2} β.
        coefficients = (back_maps[index] @ beta[rows_of_layer].unsqueeze(-1)).squeeze(-1)
        flat = activations.reshape(activations.shape[0], -1)
        weights = combine_rows(flat, train_index.to(flat.device), coefficients)
        # Held-out scores from the Gram entries: w·x_test = Σ_i a_i <x_i, x_test>, no D-sized gather.
        test_scores = (crosses[index] @ coefficients.unsqueeze(-1)).squeeze(-1)
        results[name] = _finish(
            flat, weights, bias[rows_of_layer], test_index, y_test, activations.device, test_scores=test_scores
        )
    return results[""] if single else results


#: Most float32 values of gathered problem rows held at once by :func:`problem_grams` (64 MiB).
GATHER_ELEMENTS = 1 << 24


def _problem_chunks(problems: int, rows: int, width: int) -> list[slice]:
    step = max(1, GATHER_ELEMENTS // max(1, rows * width))
    return [slice(start, min(start + step, problems)) for start in range(0, problems, step)]


def problem_grams(flat: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram entries the problems need: ``(train × train (M, t, t), test × train (M, s, t))`` float64.

    ``flat`` ``(N, D)`` holds every unique row; ``train`` ``(M, t)`` and ``test`` ``(M, s)`` index it.
    When the ``M`` problems' own products (``M·(t + s)²`` entries) are fewer than all ``N²``, they
    are computed problem by problem (batched, from gathered rows, in chunks of at most
    :data:`GATHER_ELEMENTS` values); otherwise the whole ``N × N`` Gram matrix is computed once
    and indexed. TCAV's default workload (10 random sets, 3 concepts, ~1,100 unique images):
    6× fewer products per-problem. Both are float32 products (4× faster than float64 on a CPU);
    their rounding only touches directions with eigenvalues below 1e-6 of the largest, which
    ``_embed`` drops.
    """
    rows = torch.cat([train, test], dim=1)  # (M, t + s)
    problems, count = rows.shape
    t = train.shape[1]
    values = flat.float()
    if problems * count * count >= flat.shape[0] ** 2:
        gram = (values @ values.T).double()
        return gram[train.unsqueeze(2), train.unsqueeze(1)], gram[test.unsqueeze(2), train.unsqueeze(1)]
    blocks = []
    for chunk in _problem_chunks(problems, count, values.shape[1]):
        gathered = values[rows[chunk]]  # (c, t + s, D)
        blocks.append(torch.bmm(gathered, gathered[:, :t].transpose(1, 2)).double())  # (c, t + s, t)
    products = torch.cat(blocks)
    return products[:, :t], products[:, t:]


def combine_rows(flat: torch.Tensor, rows: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``(M, D)`` float64: ``Σ_i coefficients[m, i] · flat[rows[m, i]]`` for each problem ``m``.

    Gathered per problem when that reads fewer rows than all ``N`` (chunked like :func:`problem_grams`),
    else one ``(M, N) @ (N, D)`` product with the coefficients scattered to their rows.
    """
    problems, count = rows.shape
    values = flat.float()
    if problems * count >= flat.shape[0]:
        dense = torch.zeros(problems, flat.shape[0], dtype=torch.float64, device=flat.device)
        dense.scatter_add_(1, rows, coefficients.to(flat.device))
        return (dense.float() @ values).double()
    parts = []
    for chunk in _problem_chunks(problems, count, values.shape[1]):
        weights = coefficients[chunk].to(flat.device).float().unsqueeze(1)  # (c, 1, t)
        parts.append(torch.bmm(weights, values[rows[chunk]]).squeeze(1).double())
    return torch.cat(parts)


def _finish(flat, weights, intercepts, test_index, y_test, device, test_scores=None) -> CAVs:
    weights = weights.to(device=device, dtype=torch.float64)
    intercepts = intercepts.to(device=device, dtype=torch.float64)
    if test_scores is None:
        test_scores = (flat.double().to(device)[test_index.to(device)] @ weights.unsqueeze(-1)).squeeze(-1)
    test_scores = test_scores.to(device=device, dtype=torch.float64) + intercepts.unsqueeze(1)
    accuracy = ((test_scores > 0) == (y_test.to(device) > 0)).double().mean(1)
    norms = weights.norm(dim=1, keepdim=True)
    vectors = torch.where(norms > 0, weights / norms.clamp_min(1e-300), torch.zeros_like(weights))
    return CAVs(
        vectors=vectors.float(), weights=weights.float(), intercepts=intercepts.float(), accuracy=accuracy.float()
    )


def train_cavs(
    positives: torch.Tensor | Sequence[torch.Tensor],
    negatives: torch.Tensor | Sequence[torch.Tensor],
    **options,
) -> CAVs:
    """Train one CAV per (positive set, negative set) pair, batched.

    Args:
        positives: ``(M, n, ...)`` activations of the concept examples of ``M`` problems (any
            trailing shape; flattened), or a list of ``M`` tensors ``(n, ...)``.
        negatives: ``(M, n, ...)`` activations of the random (or second-concept) examples.
        **options: see :func:`train_cavs_indexed` (classifier, backend, test_fraction, seed, ...).

    Example::

        cavs = train_cavs(striped_acts.unsqueeze(0), random_acts.unsqueeze(0))
        cavs.vectors[0], cavs.accuracy[0]
    """
    positives = torch.stack(list(positives)) if not isinstance(positives, torch.Tensor) else positives
    negatives = torch.stack(list(negatives)) if not isinstance(negatives, torch.Tensor) else negatives
    if positives.shape[:2] != negatives.shape[:2] or positives.shape[2:] != negatives.shape[2:]:
        raise ValueError(
            f"Concept and random activations must be balanced (M, n, ...) with equal shapes; got "
            f"{tuple(positives.shape)} and {tuple(negatives.shape)}"
        )
    m, n = positives.shape[:2]
    rows = torch.cat([positives.reshape(m * n, -1), negatives.reshape(m * n, -1)])
    index = torch.arange(m * n).view(m, n)
    return train_cavs_indexed(rows, index, index + m * n, **options)

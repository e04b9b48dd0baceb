"""Embeddings of a layer's features: PCA, t-SNE, and how well they separate the classes.

* :func:`pca` — principal components with ``torch.pca_lowrank`` (randomised range finder,
  Halko et al. 2011; with ``k + oversample ≥ min(N, D)`` it spans the whole range and is exact).
  Conventions follow scikit-learn's ``PCA`` so the two agree: explained variance is the
  eigenvalue of the covariance with ``N − 1`` normalisation, the ratio divides by the total
  variance, and each component's sign makes its largest-magnitude entry positive (sklearn's
  ``svd_flip`` on the components).
* :func:`tsne` — scikit-learn's t-SNE (van der Maaten & Hinton 2008), perplexity 30 by default;
  it needs more than ``3 · perplexity`` points (:func:`tsne_min_points`).
* :func:`silhouette_score` — Rousseeuw (1987): per point ``(b − a) / max(a, b)`` with ``a`` the
  mean Euclidean distance to the other points of its class and ``b`` the smallest mean distance
  to another class; 0 for a point alone in its class (as scikit-learn); the mean over points.
* :func:`linear_probe_accuracy` — held-out accuracy of an L2-regularised multinomial logistic
  regression on standardised features (Alain & Bengio 2016's linear probes).

All run on the CPU in float64, deterministically (the randomised PCA from a fixed seed on an
isolated generator, so the training's random stream is never touched).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xai_lightning.core import isolated_rng

__all__ = [
    "PCAResult",
    "check_tsne_points",
    "linear_probe_accuracy",
    "pca",
    "silhouette_score",
    "tsne",
    "tsne_min_points",
]


@dataclass(frozen=True)
class PCAResult:
    """PCA of ``N`` feature vectors of dimension ``D`` with ``k`` components (float64, CPU).

    Attributes:
        mean: ``(D,)`` the feature mean.
        components: ``(k, D)`` orthonormal principal axes, largest-magnitude entry positive.
        explained_variance: ``(k,)`` variance along each axis (``N − 1`` normalisation).
        explained_variance_ratio: ``(k,)`` the same over the total variance.
        projected: ``(N, k)`` the centred features in the components' coordinates.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor
    projected: torch.Tensor


def pca(
    features: torch.Tensor, num_components: int = 2, *, oversample: int = 10, niter: int = 4, seed: int = 0
) -> PCAResult:
    """PCA of ``features (N, D)`` with ``torch.pca_lowrank`` (``q = min(k + oversample, N, D)``)."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D); got {tuple(features.shape)}")
    n, d = features.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 feature vectors; got {n}")
    k = min(num_components, n, d)
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1; got {num_components}")
    x = features.detach().double().cpu()
    mean = x.mean(0)
    centred = x - mean
    q = min(k + oversample, n, d)
    with isolated_rng():
        # pca_lowrank draws its random test matrix from the global generator: seed it inside an
        # isolated stream, so results repeat epoch after epoch and training draws are untouched.
        torch.default_generator.manual_seed(seed)
        _, singular, vectors = torch.pca_lowrank(centred, q=q, center=False, niter=niter)
    components = vectors[:, :k].T.contiguous()
    largest = components.abs().argmax(1)
    signs = torch.sign(components[torch.arange(k), largest])
    components = components * signs.view(-1, 1)
    variance = singular[:k].square() / (n - 1)
    total = centred.square().sum() / (n - 1)
    ratio = variance / total if float(total) > 0 else torch.zeros_like(variance)
    return PCAResult(
        mean=mean,
        components=components,
        explained_variance=variance,
        explained_variance_ratio=ratio,
        projected=centred @ components.T,
    )


def tsne_min_points(perplexity: float) -> int:
    """The fewest points t-SNE accepts at ``perplexity``: more than ``3 · perplexity``."""
    return int(3 * perplexity) + 1


def check_tsne_points(num_points: int, perplexity: float, what: str = "points") -> None:
    """Raise a ValueError naming the minimum when ``num_points`` is too few for ``perplexity``."""
    if perplexity <= 0:
        raise ValueError(f"t-SNE perplexity must be > 0; got {perplexity:g}")
    minimum = tsne_min_points(perplexity)
    if num_points < minimum:
        largest = (num_points - 1) / 3
        hint = f", or lower the perplexity to at most {largest:.4g}" if largest > 0 else ""
        raise ValueError(
            f"t-SNE with perplexity {perplexity:g} needs at least {minimum} {what} (more than 3·perplexity); got "
            f"{num_points}. Use at least {minimum} {what}{hint}."
        )


def tsne(features: torch.Tensor, perplexity: float = 30.0, *, seed: int = 0, max_iter: int = 1000) -> torch.Tensor:
    """2-D t-SNE embedding ``(N, 2)`` of ``features (N, D)`` (scikit-learn, PCA initialisation)."""
    from sklearn.manifold import TSNE

    check_tsne_points(features.shape[0], perplexity)
    x = features.detach().double().cpu().numpy()
    with isolated_rng():  # sklearn uses its own RandomState(seed); isolated in case a version does not
        embedding = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
            max_iter=max_iter,
        ).fit_transform(x)
    return torch.from_numpy(embedding)


def silhouette_score(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette coefficient of ``features (N, D)`` clustered by ``labels (N,)``; NaN when
    there are fewer than 2 classes or no class with two members (undefined)."""
    x = features.detach().double().cpu()
    y = torch.as_tensor(labels).long().cpu()
    classes, y = torch.unique(y, return_inverse=True)
    n, count = x.shape[0], classes.numel()
    if count < 2 or count >= n:
        return float("nan")
    distances = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # exact, not via x·y
    one_hot = F.one_hot(y, count).double()  # (N, K)
    sizes = one_hot.sum(0)  # (K,)
    sums = distances @ one_hot  # (N, K): summed distance to each class
    own_size = sizes[y]
    a = sums[torch.arange(n), y] / (own_size - 1).clamp_min(1)
    means = sums / sizes
    means[torch.arange(n), y] = float("inf")
    b = means.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
    s = torch.where(own_size > 1, s, torch.zeros_like(s))
    return float(s.mean())


def linear_probe_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    train_fraction: float = 0.5,
    l2: float = 1e-2,
    max_iter: int = 100,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a linear softmax classifier on ``features (N, D)``.

    A seeded permutation puts ``train_fraction`` of the points into the training split; features
    are standardised with the training split's statistics; the classifier minimises the mean
    cross-entropy ``+ (l2 / 2)·‖W‖²`` (bias unpenalised) with L-BFGS (full batch, deterministic) —
    scikit-learn's ``LogisticRegression(C = 1 / (l2 · n_train))``. NaN when a split is empty.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction}")
    # Inference tensors (trainer.validate) cannot enter an autograd graph: leave inference mode and
    # copy the features into ordinary tensors first.
    with torch.inference_mode(False), torch.enable_grad():
        x = features.detach().double().cpu().clone()
        y = torch.as_tensor(labels).long().cpu().clone()
        n = x.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cut = round(train_fraction * n)
        train, test = order[:cut], order[cut:]
        if train.numel() == 0 or test.numel() == 0:
            return float("nan")
        classes = int(y.max()) + 1
        mean, std = x[train].mean(0), x[train].std(0, unbiased=False).clamp_min(1e-12)
        xs = (x - mean) / std
        weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(xs[train] @ weight + bias, y[train]) + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            predicted = (xs[test] @ weight + bias).argmax(1)
        return float((predicted == y[test]).double().mean())

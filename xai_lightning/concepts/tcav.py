"""Testing with Concept Activation Vectors (Kim et al., ICML 2018, "Interpretability Beyond Feature
Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)").

For a layer ``l``, a concept ``C`` with CAV ``v_C`` (unit, pointing to the concept) and a class
``k`` with logit ``h_k``, the conceptual sensitivity of an input ``x`` is the directional
derivative ``S_{C,k,l}(x) = ∇h_{l,k}(f_l(x)) · v_C``. Over the inputs ``X_k`` of class ``k``:

* sign-count TCAV   ``|{x ∈ X_k : S(x) > 0}| / |X_k|``;
* magnitude TCAV    ``Σ_x |S(x)|·[S(x) > 0] / Σ_x |S(x)|``.

We differentiate the class **logit** (REFERENCE.md; tcav's code differentiates the loss, which
flips the sign). Gradients are computed once per example for all layers (one backward pass per
``max_batch`` slice) and reused for every CAV: the scores of all concepts × random sets are one
matrix product ``gradients @ cavsᵀ``.

Significance (section 3.2 of the paper): each concept is tested against ``N`` random
counter-sets (default 10), giving ``N`` scores; ``N`` random-vs-random scores form the null; a
two-sided t-test compares the two (:func:`~xai_lightning.concepts.significance.two_sided_t_test`), with an optional
Bonferroni correction over all (layer, concept, class) hypotheses.

The runs must be exchangeable under the null for the t-test to hold its level. Run ``r`` of a
concept uses its own seeded subsample of the concept's examples against random set ``r``; run
``r`` of the null uses a *different* random set ``N + r`` as its "concept" against the same
random set ``r``. (Captum and tcav reuse one random "concept" set for every null run; on
ConceptWorld that declares random-vs-random significant in about a third of the seeds, because
all null runs share their positives — our test would catch it.)

Relative CAVs (concept A vs concept B instead of vs random) come from
:meth:`TCAV.fit_relative_cavs`; each run uses a different seeded subsample of A and B.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.concepts.activations import layer_activations, logit_gradients
from xai_lightning.concepts.cav import CAVBackend, CAVClassifier, train_cavs_indexed
from xai_lightning.concepts.concept_sets import draw_random_sets
from xai_lightning.concepts.significance import two_sided_t_test
from xai_lightning.core import batch_slices, observe, resolve_layers, select_logits

__all__ = [
    "ConceptCAVs",
    "ScoreKind",
    "TCAV",
    "TCAVResult",
    "cav_similarity",
    "directional_derivatives",
    "sort_by_cav_similarity",
    "tcav_from_derivatives",
]

ScoreKind = Literal["sign_count", "magnitude"]


@dataclass(frozen=True)
class ConceptCAVs:
    """CAVs of ``C`` concepts against ``R`` random sets in ``L`` layers, plus the random-vs-random ones.

    Attributes:
        layers: the ``L`` layer names.
        concepts: the ``C`` concept names (for relative CAVs: ``"A vs B"``).
        vectors: layer → ``(C, R, D_layer)`` unit CAVs (concept vs random set r).
        accuracy: ``(L, C, R)`` held-out accuracy of each CAV.
        random_vectors: layer → ``(R, D_layer)`` unit CAVs of the random "concept" vs random set r.
        random_accuracy: ``(L, R)`` their accuracy (≈ 0.5 by construction).
        examples_per_concept: examples on each side of every CAV (before the 1/3 hold-out).
    """

    layers: tuple[str, ...]
    concepts: tuple[str, ...]
    vectors: dict[str, torch.Tensor]
    accuracy: torch.Tensor
    random_vectors: dict[str, torch.Tensor]
    random_accuracy: torch.Tensor
    examples_per_concept: int = 0

    @property
    def num_random(self) -> int:
        return self.accuracy.shape[-1]

    def all_vectors(self, layer: str) -> torch.Tensor:
        """``(C + 1, R, D)``: the concepts' CAVs, then the random-vs-random ones."""
        return torch.cat([self.vectors[layer], self.random_vectors[layer].unsqueeze(0)])

    def mean_vector(self, layer: str) -> torch.Tensor:
        """``(C, D)``: each concept's CAV averaged over the random sets, renormalised (for display)."""
        mean = self.vectors[layer].mean(1)
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and lists (for checkpoints)."""
        return {
            "layers": list(self.layers),
            "concepts": list(self.concepts),
            "vectors": {k: v.detach().cpu() for k, v in self.vectors.items()},
            "accuracy": self.accuracy.cpu(),
            "random_vectors": {k: v.detach().cpu() for k, v in self.random_vectors.items()},
            "random_accuracy": self.random_accuracy.cpu(),
            "examples_per_concept": self.examples_per_concept,
        }

    @staticmethod
    def from_dict(state: Mapping[str, Any]) -> "ConceptCAVs":
        return ConceptCAVs(
            layers=tuple(state["layers"]),
            concepts=tuple(state["concepts"]),
            vectors=dict(state["vectors"]),
            accuracy=state["accuracy"],
            random_vectors=dict(state["random_vectors"]),
            random_accuracy=state["random_accuracy"],
            examples_per_concept=int(state.get("examples_per_concept", 0)),
        )


@dataclass(frozen=True)
class TCAVResult:
    """TCAV scores with significance, for ``L`` layers × ``C`` concepts × ``K`` classes × ``R`` random sets.

    Attributes:
        scores: ``(L, C, K, R)`` sign-count TCAV of each concept-vs-random-set CAV.
        magnitudes: ``(L, C, K, R)`` magnitude TCAV.
        random_scores, random_magnitudes: ``(L, K, R)`` the random-vs-random baseline.
        cav_accuracy: ``(L, C, R)``; random_cav_accuracy: ``(L, R)``.
        p_values: ``(L, C, K)`` two-sided t-test of the concept's scores (``score_kind``) against
            the random-vs-random ones; NaN for a class without inputs.
        significant: ``(L, C, K)`` bool, ``p < alpha`` (``alpha / (L·C·K)`` with Bonferroni).
        counts: ``(K,)`` inputs of each class that were scored.
    """

    layers: tuple[str, ...]
    concepts: tuple[str, ...]
    classes: tuple[int, ...]
    scores: torch.Tensor
    magnitudes: torch.Tensor
    random_scores: torch.Tensor
    random_magnitudes: torch.Tensor
    cav_accuracy: torch.Tensor
    random_cav_accuracy: torch.Tensor
    p_values: torch.Tensor
    significant: torch.Tensor
    counts: torch.Tensor
    alpha: float = 0.05
    bonferroni: bool = False
    score_kind: ScoreKind = "sign_count"
    class_names: tuple[str, ...] | None = field(default=None)

    @property
    def mean(self) -> torch.Tensor:
        """``(L, C, K)`` mean TCAV (``score_kind``) over the random sets."""
        return self._tested.mean(-1)

    @property
    def std(self) -> torch.Tensor:
        """``(L, C, K)`` standard deviation over the random sets (unbiased)."""
        return self._tested.std(-1)

    @property
    def random_mean(self) -> torch.Tensor:
        return (self.random_scores if self.score_kind == "sign_count" else self.random_magnitudes).mean(-1)

    @property
    def random_std(self) -> torch.Tensor:
        return (self.random_scores if self.score_kind == "sign_count" else self.random_magnitudes).std(-1)

    @property
    def _tested(self) -> torch.Tensor:
        return self.scores if self.score_kind == "sign_count" else self.magnitudes

    def index(self, layer: str, concept: str, target: int) -> tuple[int, int, int]:
        return self.layers.index(layer), self.concepts.index(concept), self.classes.index(target)

    def class_name(self, target: int) -> str:
        if self.class_names is not None and 0 <= target < len(self.class_names):
            return self.class_names[target]
        return str(target)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (layer, concept, class): the table every report and callback logs."""
        out = []
        mean, std, random_mean, random_std = self.mean, self.std, self.random_mean, self.random_std
        magnitude = self.magnitudes.mean(-1)
        sign_count = self.scores.mean(-1)
        random_sign, random_magnitude = self.random_scores.mean(-1), self.random_magnitudes.mean(-1)
        for li, layer in enumerate(self.layers):
            for ci, concept in enumerate(self.concepts):
                for ki, target in enumerate(self.classes):
                    out.append(
                        {
                            "layer": layer,
                            "concept": concept,
                            "class": self.class_name(target),
                            "class_index": target,
                            "tcav_mean": float(mean[li, ci, ki]),
                            "tcav_std": float(std[li, ci, ki]),
                            "magnitude_mean": float(magnitude[li, ci, ki]),
                            "sign_count_mean": float(sign_count[li, ci, ki]),
                            "random_sign_count_mean": float(random_sign[li, ki]),
                            "random_magnitude_mean": float(random_magnitude[li, ki]),
                            "random_mean": float(random_mean[li, ki]),
                            "random_std": float(random_std[li, ki]),
                            "p_value": float(self.p_values[li, ci, ki]),
                            "significant": bool(self.significant[li, ci, ki]),
                            "cav_accuracy_mean": float(self.cav_accuracy[li, ci].mean()),
                            "cav_accuracy_std": float(self.cav_accuracy[li, ci].std()),
                            "num_inputs": int(self.counts[ki]),
                        }
                    )
        return out


# ---------------------------------------------------------------------- scores from derivatives
def directional_derivatives(gradients: Mapping[str, torch.Tensor], cavs: ConceptCAVs) -> dict[str, torch.Tensor]:
    """``S = ∇h · v`` for every input and CAV: layer → ``(N, C + 1, R)`` (the last concept row is
    random-vs-random). One matrix product per layer."""
    out = {}
    for layer in cavs.layers:
        vectors = cavs.all_vectors(layer).to(gradients[layer].device)
        c1, r, d = vectors.shape
        grads = gradients[layer]
        if grads.shape[1] != d:
            raise ValueError(f"Layer {layer!r}: gradients have {grads.shape[1]} features but the CAVs {d}.")
        out[layer] = (grads.double() @ vectors.reshape(c1 * r, d).T.double()).view(-1, c1, r)
    return out


def _sign_and_magnitude(derivatives: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores over the inputs selected by ``member (N, K)``: ``(K, C+1, R)`` sign-count and magnitude."""
    weights = member.double()  # (N, K)
    count = weights.sum(0).view(-1, 1, 1)
    positive = (derivatives > 0).double()
    sign = torch.einsum("nk,ncr->kcr", weights, positive) / count
    absolute = derivatives.abs()
    magnitude = torch.einsum("nk,ncr->kcr", weights, absolute * positive) / torch.einsum(
        "nk,ncr->kcr", weights, absolute
    )
    return sign, magnitude


def tcav_from_derivatives(
    derivatives: Mapping[str, torch.Tensor],
    targets: torch.Tensor,
    classes: Sequence[int],
    cavs: ConceptCAVs,
    *,
    alpha: float = 0.05,
    bonferroni: bool = False,
    score_kind: ScoreKind = "sign_count",
    class_names: Sequence[str] | None = None,
) -> TCAVResult:
    """TCAV scores and significance from per-input directional derivatives.

    Args:
        derivatives: layer → ``(N, C + 1, R)`` from :func:`directional_derivatives`; the derivative
            of input ``i`` must be that of the logit of class ``targets[i]``.
        targets: ``(N,)`` the class of each input; inputs of other classes are ignored.
        classes: the ``K`` classes to score.
    """
    if score_kind not in ("sign_count", "magnitude"):
        raise ValueError(f"score_kind must be 'sign_count' or 'magnitude'; got {score_kind!r}")
    targets = torch.as_tensor(targets).long().cpu()
    class_tensor = torch.as_tensor(list(classes), dtype=torch.long)
    member = targets.view(-1, 1) == class_tensor.view(1, -1)  # (N, K)
    signs, magnitudes = [], []
    for layer in cavs.layers:
        sign, magnitude = _sign_and_magnitude(derivatives[layer].cpu(), member)
        signs.append(sign)
        magnitudes.append(magnitude)
    sign = torch.stack(signs).permute(0, 2, 1, 3)  # (L, C+1, K, R)
    magnitude = torch.stack(magnitudes).permute(0, 2, 1, 3)
    tested = sign if score_kind == "sign_count" else magnitude
    p_values = two_sided_t_test(tested[:, :-1], tested[:, -1:])  # (L, C, K)
    hypotheses = p_values.numel() if bonferroni else 1
    significant = (p_values < alpha / max(hypotheses, 1)) & ~torch.isnan(p_values)
    return TCAVResult(
        layers=cavs.layers,
        concepts=cavs.concepts,
        classes=tuple(int(k) for k in class_tensor),
        scores=sign[:, :-1].float(),
        magnitudes=magnitude[:, :-1].float(),
        random_scores=sign[:, -1].float(),
        random_magnitudes=magnitude[:, -1].float(),
        cav_accuracy=cavs.accuracy.float(),
        random_cav_accuracy=cavs.random_accuracy.float(),
        p_values=p_values,
        significant=significant,
        counts=member.sum(0),
        alpha=alpha,
        bonferroni=bonferroni,
        score_kind=score_kind,
        class_names=tuple(class_names) if class_names is not None else None,
    )


# ---------------------------------------------------------------------- similarity
def cav_similarity(activations: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(N, M)`` between flattened activations ``(N, D)`` and CAVs ``(M, D)``."""
    a = activations.flatten(1).double()
    v = vectors.reshape(-1, a.shape[1]).double()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ v.T).float()


def sort_by_cav_similarity(
    model: nn.Module, images: torch.Tensor, layer: str, cav: torch.Tensor, *, max_batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ordered from most to least similar to a CAV (cosine of their layer activation with it),
    as the TCAV paper's figure 2. Returns ``(order (N,), similarity (N,))`` with similarity in image order."""
    with observe(model):
        name = resolve_layers(model, layer)[0]
    activations = layer_activations(model, images, [name], max_batch=max_batch)[name]
    similarity = cav_similarity(activations, cav.to(activations.device).reshape(1, -1))[:, 0]
    return torch.argsort(similarity, descending=True, stable=True), similarity


# ---------------------------------------------------------------------- the method object
class TCAV:
    """TCAV with significance testing, Captum style: configure once, then ``attribute``.

    Args:
        layers: dotted layer name(s) or ``"auto"``.
        num_random: random counter-sets per concept (≥ 2; paper: 10 to 500).
        examples_per_concept: examples on each side of every CAV (paper: 50–200); concept
            sets with fewer examples lower it for all concepts (with a warning).
        classifier: ``"logistic"`` or ``"hinge"`` (tcav's SGD hinge loss); backend ``"torch"``
            (batched) or ``"sklearn"`` (one fit per CAV, for parity).
        test_fraction: held-out fraction for CAV accuracy (1/3).
        alpha, bonferroni: significance level and correction.
        score_kind: which score is tested: ``"sign_count"`` (default) or ``"magnitude"``.
        seed: seed of the random sets and of the CAV train/test split.
        max_batch: examples per forward/backward pass.
        output_key: where the logits are when the model returns a dict/tuple.
        c, hinge_alpha, max_iter: classifier settings (see :func:`train_cavs_indexed`).

    Example::

        tcav = TCAV(layers=["network.features.13"], num_random=10)
        result = tcav.attribute(model, inputs, labels, {"striped": striped_images}, random_pool=val_images)
        result.rows()   # mean, std, p, significant per (layer, concept, class)
    """

    def __init__(
        self,
        layers: str | Sequence[str] = "auto",
        num_random: int = 10,
        examples_per_concept: int = 50,
        classifier: CAVClassifier = "logistic",
        backend: CAVBackend = "torch",
        test_fraction: float = 1 / 3,
        alpha: float = 0.05,
        bonferroni: bool = False,
        score_kind: ScoreKind = "sign_count",
        seed: int = 0,
        max_batch: int | None = 256,
        output_key: str | int | None = None,
        c: float = 1.0,
        hinge_alpha: float = 0.01,
        max_iter: int | None = None,
    ) -> None:
        if num_random < 2:
            raise ValueError(f"num_random must be >= 2 for the t-test; got {num_random}")
        if examples_per_concept < 3:
            raise ValueError(f"examples_per_concept must be >= 3 (train/test split); got {examples_per_concept}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1); got {alpha}")
        if score_kind not in ("sign_count", "magnitude"):
            raise ValueError(f"score_kind must be 'sign_count' or 'magnitude'; got {score_kind!r}")
        self.layers = layers
        self.num_random = num_random
        self.examples_per_concept = examples_per_concept
        self.classifier = classifier
        self.backend = backend
        self.test_fraction = test_fraction
        self.alpha = alpha
        self.bonferroni = bonferroni
        self.score_kind = score_kind
        self.seed = seed
        self.max_batch = max_batch
        self.output_key = output_key
        self.c = c
        self.hinge_alpha = hinge_alpha
        self.max_iter = max_iter

    # ------------------------------------------------------------------ helpers
    def resolve_layers(self, model: nn.Module, example: torch.Tensor) -> list[str]:
        with observe(model) as guard:
            return resolve_layers(
                model, self.layers, forward=lambda: model(guard.input(example[:1], requires_grad=False))
            )

    def _cav_options(self) -> dict[str, Any]:
        return dict(
            classifier=self.classifier,
            backend=self.backend,
            test_fraction=self.test_fraction,
            seed=self.seed,
            c=self.c,
            alpha=self.hinge_alpha,
            max_iter=self.max_iter,
        )

    def _count(self, sets: Mapping[str, torch.Tensor]) -> int:
        if not sets:
            raise ValueError("At least one concept is required.")
        for name, images in sets.items():
            if images.dim() != 4:
                raise ValueError(f"Concept {name!r}: expected images (N, C, H, W); got {tuple(images.shape)}")
        smallest = min(images.shape[0] for images in sets.values())
        count = min(self.examples_per_concept, smallest)
        if count < self.examples_per_concept:
            small = [name for name, images in sets.items() if images.shape[0] == smallest]
            warnings.warn(
                f"TCAV: concept {small[0]!r} has only {smallest} examples; using {count} per concept and random set "
                f"instead of examples_per_concept={self.examples_per_concept}.",
                stacklevel=3,
            )
        return count

    def _subsample(self, size: int, count: int, stream: int) -> torch.Tensor:
        """``(R, count)`` rows of a set of ``size`` examples: run r draws its own seeded subsample.

        The draw depends on (seed, run, size) only — not on the concept's name or position — so
        scores do not depend on the order of the concepts. A set of exactly ``count`` examples is
        used whole in every run.
        """
        runs = [
            torch.randperm(size, generator=torch.Generator().manual_seed(self.seed * 7919 + 104_729 * stream + run))[
                :count
            ]
            for run in range(self.num_random)
        ]
        return torch.stack(runs).sort(dim=1).values

    def _fit(
        self,
        model: nn.Module,
        names: Sequence[str],
        positive_sets: Sequence[torch.Tensor],
        negative_sets: Sequence[torch.Tensor] | None,
        random_pool: torch.Tensor,
        count: int,
        layers: Sequence[str],
        trainer: Any | None,
    ) -> ConceptCAVs:
        """CAVs for run r of problem i: a subsample of ``positive_sets[i]`` vs random set r (or vs a
        subsample of ``negative_sets[i]``), plus the null: random set ``R + r`` vs random set r.

        All unique images pass through the model once; all CAVs of all layers are one solve.
        """
        r = self.num_random
        # Sets 0..R-1 are the counter-sets; sets R..2R-1 are the null's "concepts", one per run, so
        # that null scores vary over both sides exactly as a concept subsampled per run does.
        random_index = draw_random_sets(random_pool, 2 * r, count, self.seed)
        used_pool, pool_rows = torch.unique(random_index, return_inverse=True)
        blocks = [random_pool[used_pool]]
        offset = blocks[0].shape[0]
        positive_rows, negative_rows = [], []

        def add(images: torch.Tensor, stream: int) -> torch.Tensor:
            nonlocal offset
            blocks.append(images)
            rows = self._subsample(images.shape[0], count, stream) + offset
            offset += images.shape[0]
            return rows

        for i, images in enumerate(positive_sets):
            # Runs are keyed by set size and side only, so a concept's subsamples do not depend on its position.
            positive_rows.append(add(images, 0))
            negative_rows.append(pool_rows[:r] if negative_sets is None else add(negative_sets[i], 1))
        positive_rows.append(pool_rows[r:])
        negative_rows.append(pool_rows[:r])
        images = torch.cat([b.float() for b in blocks])
        device = next(iter(model.parameters()), torch.empty(0)).device
        activations = layer_activations(
            model, images.to(device), layers, max_batch=self.max_batch, output_key=self.output_key, trainer=trainer
        )
        cavs = train_cavs_indexed(
            activations, torch.cat(positive_rows), torch.cat(negative_rows), **self._cav_options()
        )
        c = len(names)
        vectors, random_vectors, accuracy, random_accuracy = {}, {}, [], []
        for layer in layers:
            all_vectors = cavs[layer].vectors.view(c + 1, r, -1)
            all_accuracy = cavs[layer].accuracy.view(c + 1, r)
            vectors[layer], random_vectors[layer] = all_vectors[:c], all_vectors[c]
            accuracy.append(all_accuracy[:c])
            random_accuracy.append(all_accuracy[c])
        return ConceptCAVs(
            layers=tuple(layers),
            concepts=tuple(names),
            vectors=vectors,
            accuracy=torch.stack(accuracy).cpu(),
            random_vectors=random_vectors,
            random_accuracy=torch.stack(random_accuracy).cpu(),
            examples_per_concept=count,
        )

    # ------------------------------------------------------------------ public API
    def fit_cavs(
        self,
        model: nn.Module,
        concepts: Mapping[str, torch.Tensor],
        random_pool: torch.Tensor,
        *,
        layers: Sequence[str] | None = None,
        trainer: Any | None = None,
    ) -> ConceptCAVs:
        """Train every concept's CAVs against ``num_random`` random sets from ``random_pool (P, C, H, W)``,
        plus the random-vs-random CAVs, for all layers in one batched solve.

        Run ``r`` pairs a seeded subsample of ``examples_per_concept`` images of each concept with
        random set ``r`` (a seeded draw of as many pool images). Give concept sets larger than
        ``examples_per_concept`` (2–4×): the runs then differ on the concept side too, as the
        null's do; a set of exactly ``examples_per_concept`` images is reused whole by every run,
        which makes the t-test anti-conservative (its runs share all their positives).
        """
        count = self._count(concepts)
        layers = list(layers) if layers is not None else self.resolve_layers(model, random_pool)
        names = list(concepts)
        return self._fit(model, names, [concepts[name] for name in names], None, random_pool, count, layers, trainer)

    def fit_relative_cavs(
        self,
        model: nn.Module,
        pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        random_pool: torch.Tensor,
        *,
        layers: Sequence[str] | None = None,
        trainer: Any | None = None,
    ) -> ConceptCAVs:
        """Relative CAVs: concept A vs concept B (``pairs["striped vs dotted"] = (A, B)``).

        Run ``r`` uses a seeded subsample of ``count = min(examples_per_concept, |A|, |B|)``
        examples of each — without replacement when a set has more than ``count`` examples — so
        the ``num_random`` runs differ and can be tested against the random-vs-random null.
        """
        count = self._count({f"{name}[{side}]": s for name, pair in pairs.items() for side, s in zip("AB", pair)})
        layers = list(layers) if layers is not None else self.resolve_layers(model, random_pool)
        names = list(pairs)
        positives = [pairs[name][0] for name in names]
        negatives = [pairs[name][1] for name in names]
        return self._fit(model, names, positives, negatives, random_pool, count, layers, trainer)

    def gradients(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        layers: Sequence[str],
        trainer: Any | None = None,
        activations: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logit gradients ``(N, D)`` per layer of each input's target class, checked against the logits.

        ``activations``: a dict to receive the layers' ``(N, D)`` activations of the same forward pass."""
        gradients, _, _ = logit_gradients(
            model,
            inputs,
            torch.as_tensor(targets).long(),
            layers,
            max_batch=self.max_batch,
            output_key=self.output_key,
            trainer=trainer,
            activations=activations,
        )
        return gradients

    def probe_derivatives(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        cavs: ConceptCAVs,
        *,
        similarity: bool = False,
        trainer: Any | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(derivatives, similarities)`` of ``inputs (N, C, H, W)``: layer → ``(N, C + 1, R)``
        directional derivatives (:func:`directional_derivatives`) and, with ``similarity``, layer →
        ``(N, C)`` cosine of each input's activation with each concept's mean CAV.

        Streamed ``max_batch`` inputs at a time: one forward and backward pass per slice gives the
        gradients (and the activations, from the same pass), which are reduced to derivatives and
        similarities before the next slice — memory ``O(max_batch · D)``, flat in the number of inputs.
        """
        (derivatives,), similarities = self.probe_derivative_sets(
            model, inputs, targets, [cavs], similarity_cavs=cavs if similarity else None, trainer=trainer
        )
        return derivatives, similarities

    def probe_derivative_sets(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        cav_sets: Sequence[ConceptCAVs],
        *,
        similarity_cavs: ConceptCAVs | None = None,
        trainer: Any | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """:meth:`probe_derivatives` for several CAV sets (concept CAVs and relative CAVs, say) from
        the same streamed passes: one list entry per set, layer → ``(N, C_set + 1, R)``; similarities
        (layer → ``(N, C)``) against ``similarity_cavs``' mean vectors when given, else empty."""
        targets = torch.as_tensor(targets).long()
        layers = list(dict.fromkeys(layer for cavs in cav_sets for layer in cavs.layers))
        if similarity_cavs is not None:
            layers += [layer for layer in similarity_cavs.layers if layer not in layers]
        derivatives: list[dict[str, list[torch.Tensor]]] = [{layer: [] for layer in cavs.layers} for cavs in cav_sets]
        means = (
            {}
            if similarity_cavs is None
            else {layer: similarity_cavs.mean_vector(layer) for layer in similarity_cavs.layers}
        )
        similar_layers = list(means)
        similarities: dict[str, list[torch.Tensor]] = {layer: [] for layer in similar_layers}
        for rows in batch_slices(inputs.shape[0], self.max_batch):
            activations: dict[str, torch.Tensor] | None = {} if similarity_cavs is not None else None
            gradients = self.gradients(
                model, inputs[rows], targets[rows], layers, trainer=trainer, activations=activations
            )
            for cavs, parts in zip(cav_sets, derivatives):
                for layer, value in directional_derivatives(gradients, cavs).items():
                    parts[layer].append(value)
            if activations is not None:
                for layer in similar_layers:
                    mean = means[layer].to(activations[layer].device)
                    similarities[layer].append(cav_similarity(activations[layer], mean))
        return (
            [{layer: torch.cat(chunks) for layer, chunks in parts.items()} for parts in derivatives],
            {layer: torch.cat(chunks) for layer, chunks in similarities.items() if chunks},
        )

    def score(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        cavs: ConceptCAVs,
        classes: Sequence[int] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        trainer: Any | None = None,
    ) -> TCAVResult:
        """TCAV of ``cavs`` for ``classes`` over ``inputs (N, C, H, W)`` with ``labels (N,)``.

        The inputs of class k are those labelled k; their class-k logit is differentiated once.
        ``classes=None``: every class present in ``labels``.
        """
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape[0] != inputs.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {inputs.shape[0]} inputs")
        classes = sorted(set(labels.tolist())) if classes is None else [int(k) for k in classes]
        device = next(iter(model.parameters()), torch.empty(0)).device
        with observe(model) as guard:
            num_classes = select_logits(
                model(guard.input(inputs[:1].to(device), requires_grad=False)), self.output_key
            ).shape[1]
        bad = [k for k in classes if not 0 <= k < num_classes]
        if bad:
            raise ValueError(
                f"Class index {bad[0]} is out of range: the model has {num_classes} classes "
                f"(valid 0..{num_classes - 1})."
            )
        keep = torch.isin(labels, torch.as_tensor(classes, dtype=torch.long))
        rows = torch.nonzero(keep).flatten()
        derivatives, _ = self.probe_derivatives(model, inputs[rows].to(device), labels[rows], cavs, trainer=trainer)
        return tcav_from_derivatives(
            derivatives,
            labels[rows],
            classes,
            cavs,
            alpha=self.alpha,
            bonferroni=self.bonferroni,
            score_kind=self.score_kind,
            class_names=class_names,
        )

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        concepts: Mapping[str, torch.Tensor],
        random_pool: torch.Tensor | None = None,
        classes: Sequence[int] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        trainer: Any | None = None,
    ) -> TCAVResult:
        """Train CAVs (:meth:`fit_cavs`) and score them (:meth:`score`) in one call.

        ``random_pool`` defaults to ``inputs`` themselves.
        """
        pool = inputs if random_pool is None else random_pool
        layers = self.resolve_layers(model, pool)
        cavs = self.fit_cavs(model, concepts, pool, layers=layers, trainer=trainer)
        return self.score(model, inputs, labels, cavs, classes, class_names=class_names, trainer=trainer)

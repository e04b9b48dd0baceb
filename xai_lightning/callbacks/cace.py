"""CaCECallback: watch a model take (or leave) a concept shortcut, epoch by epoch."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.concepts import (
    TCAV,
    ConceptCAVs,
    ConceptIntervention,
    class_output,
    directional_derivatives,
    intervention_for_dataset,
    parse_concept,
    split_balanced,
    tcav_from_derivatives,
)
from xai_lightning.core import resolve_layers, select_logits

__all__ = ["CaCECallback"]

Estimator = Literal["ground_truth", "conexp", "tcav"]
ESTIMATORS: tuple[str, ...] = ("ground_truth", "conexp", "tcav")
TABLE_COLUMNS = ("epoch", "step", "estimator", "value", "stderr", "p_value")


class CaCECallback(ObserverCallback):
    """Causal concept effect (Goyal et al. 2019) of one concept on one class, every ``every_n_epochs`` epochs.

    The probe images are samples of a generator that can re-render them with the concept
    switched (BARS, coloured digits, ConceptWorld — e.g. the validation set of a
    :class:`~xai_lightning.data.BarsDataModule`). At each scheduled epoch, inside the observer
    guard (training stays bit-identical), it computes on the probe set:

    * **ground truth** ``E[f | do(C=1)] − E[f | do(C=0)]``: the same images re-rendered with the
      concept set to the treated and to the control value (rendered once at ``setup``);
    * **ConExp** ``E[f | C=1] − E[f | C=0]`` over the observed images (what a user without a
      generator would compute; biased under confounding);
    * **TCAV** (Kim et al. 2018): CAVs of the probe images showing the concept against
      ``num_random`` random sets of probe images, the sign-count score of the target class's
      probe images, and its p-value against random-vs-random CAVs.

    ``f`` is the target class's softmax probability (``output="probability"``) or logit. Rising
    ground truth while the accuracy rises means the model is learning the concept as a shortcut.

    Logged keys (``<concept>`` with ``=`` as ``_``, e.g. ``colour_green``; ``<class>`` the target's name):

    ======================================================  =====================================
    ``cace/<concept>/<class>/ground_truth``                 mean paired effect of do(C=1) vs do(C=0)
    ``cace/<concept>/<class>/ground_truth_stderr``          its standard error over the probe
    ``cace/<concept>/<class>/conexp``                       observational difference of means
    ``cace/<concept>/<class>/conexp_stderr``                its (Welch) standard error
    ``cace/<concept>/<class>/tcav/<layer>/score``           TCAV mean over the random sets
    ``cace/<concept>/<class>/tcav/<layer>/p_value``         t-test against random-vs-random
    ``cace/<concept>/<class>/tcav/<layer>/significant``     1.0 when p < alpha
    ``cace/estimates``                                      table: every estimate of every epoch so far
    ======================================================  =====================================

    Args:
        concept: ``"<latent>=<value>"``: ``"colour=green"`` (BARS), ``"colour=3"`` (coloured
            digits: the hue of class 3), ``"colour=red"``/``"texture=striped"``/… (ConceptWorld).
        target: the class whose output is affected: an index or a class name (``"vertical"``).
        estimators: any of ``"ground_truth"``, ``"conexp"``, ``"tcav"``.
        num_probe: generator samples in the probe set (drawn once from ``probe_split``).
        every_n_epochs: how often.
        tcav_layers: layer(s) for TCAV (dotted names or ``"auto"``).
        num_random: TCAV random sets (≥ 10 recommended for the t-test).
        examples_per_concept: examples on each side of every CAV.
        alpha: TCAV significance level.
        output: ``"probability"`` (the paper's f) or ``"logit"``.
        seed: seed of the control values (multi-valued concepts) and of the TCAV random sets.
        max_batch: cap on images per forward/backward pass.
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    ``set_intervention(intervention)`` gives a :class:`~xai_lightning.concepts.ConceptIntervention`
    from Python instead (its images become the probe; without a ``render`` function only ConExp
    and TCAV can be asked for).

    DDP: the probe is sharded across ranks and the per-image outputs gathered; every rank trains
    the same CAVs on the full probe; rank zero logs.
    """

    namespace = "cace"

    def __init__(
        self,
        concept: str = "colour=green",
        target: int | str = 1,
        estimators: list[Estimator] | None = None,
        num_probe: int = 256,
        every_n_epochs: int = 1,
        tcav_layers: str | list[str] = "auto",
        num_random: int = 10,
        examples_per_concept: int = 30,
        alpha: float = 0.05,
        output: Literal["probability", "logit"] = "probability",
        seed: int = 0,
        max_batch: int | None = 256,
        probe_split: ProbeSplit = "val",
        probe_seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(
            num_probe=num_probe,
            every_n_epochs=every_n_epochs,
            probe_split=probe_split,
            probe_seed=probe_seed,
            on_error=on_error,
        )
        parse_concept(concept)
        chosen = list(ESTIMATORS) if estimators is None else list(estimators)
        unknown = [e for e in chosen if e not in ESTIMATORS]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(f"estimators must be a non-empty list of distinct {ESTIMATORS}; got {estimators}")
        if output not in ("probability", "logit"):
            raise ValueError(f"output must be 'probability' or 'logit'; got {output!r}")
        if isinstance(target, int) and target < 0:
            raise ValueError(f"target must be a class index >= 0 or a class name; got {target}")
        self.concept = concept
        self.target = target
        self.estimators = chosen
        self.tcav_layers = tcav_layers
        self.output = output
        self.seed = seed
        self.max_batch = max_batch
        self.tcav = TCAV(
            layers=tcav_layers,
            num_random=num_random,
            examples_per_concept=examples_per_concept,
            alpha=alpha,
            seed=seed,
            max_batch=max_batch,
        )
        self.intervention: ConceptIntervention | None = None
        self.target_index: int = -1
        self.target_name: str = str(target)
        self.layer_names: list[str] = []
        self.cavs: ConceptCAVs | None = None
        self.table_history: list[list[Any]] = []
        self._given_intervention: ConceptIntervention | None = None
        self._treated: torch.Tensor | None = None
        self._control: torch.Tensor | None = None

    # ------------------------------------------------------------------ Python API
    def set_intervention(
        self, intervention: ConceptIntervention, class_names: tuple[str, ...] | None = None
    ) -> CaCECallback:
        """Measure on these samples (their images become the probe set) instead of drawing from the data.

        ``class_names`` name the classes in the logged keys (else the class index is used).
        """
        self._given_intervention = intervention
        self.set_probe(intervention.images, intervention.labels, class_names=class_names)
        return self

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, concept=self.concept, target=self.target)

    @property
    def key_prefix(self) -> str:
        return f"{self.namespace}/{self.concept.replace('=', '_')}/{self.target_name}"

    # ------------------------------------------------------------------ setup
    def _generator_dataset(self, trainer: pl.Trainer) -> Any:
        """The dataset the probe was drawn from, unwrapped to the generator where a datamodule keeps it."""
        datamodule = getattr(trainer, "datamodule", None)
        kept = getattr(datamodule, f"{self.probe_split}_set", None) if datamodule is not None else None
        if kept is not None:
            return kept
        source = find_probe_dataset(trainer, self.probe_split)
        return getattr(source, "dataset", source)

    def _resolve_target(self, class_names: tuple[str, ...] | None, num_classes: int) -> int:
        if isinstance(self.target, str) and not self.target.lstrip("-").isdigit():
            if not class_names or self.target not in class_names:
                raise ValueError(
                    f"CaCECallback: unknown target class {self.target!r}; the classes are "
                    f"{list(class_names) if class_names else list(range(num_classes))}"
                )
            index = list(class_names).index(self.target)
        else:
            index = int(self.target)
        if not 0 <= index < num_classes:
            raise ValueError(
                f"CaCECallback: target class {index} is out of range: the model has {num_classes} "
                f"classes (valid 0..{num_classes - 1})."
            )
        return index

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        one = probe.images[:1].to(pl_module.device)
        num_classes = select_logits(pl_module(one), None).shape[1]
        dataset = None if self._given_intervention is not None else self._generator_dataset(trainer)
        class_names = getattr(dataset, "class_names", None) or probe.class_names
        self.target_index = self._resolve_target(tuple(class_names) if class_names else None, num_classes)
        self.target_name = (
            class_names[self.target_index]
            if class_names and self.target_index < len(class_names)
            else str(self.target_index)
        )
        if self._given_intervention is not None:
            intervention = dataclasses.replace(self._given_intervention, target=self.target_index)
        else:
            intervention = intervention_for_dataset(
                dataset, self.concept, self.target_index, indices=probe.indices, seed=self.seed
            )
            if intervention.images.shape != probe.images.shape or not torch.allclose(intervention.images, probe.images):
                raise ValueError(
                    f"CaCECallback: the probe images are not the {type(dataset).__name__} samples it would re-render "
                    "(the loader reorders or transforms them). Use the generator's own datamodule or call "
                    "set_intervention(...)."
                )
        observed = intervention.observed
        if "ground_truth" in self.estimators:
            if intervention.render is None:
                raise ValueError(
                    f"CaCECallback: ground-truth CaCE of {intervention.name!r} needs a generator that re-renders the "
                    "samples, but this intervention has none (render=None). Drop 'ground_truth' from estimators or "
                    "give a ConceptIntervention with a render function."
                )
            self._treated, self._control = (images.float().cpu() for images in intervention.intervened())
        if "conexp" in self.estimators and not 0 < int(observed.sum()) < observed.numel():
            raise ValueError(
                f"CaCECallback: ConExp of {intervention.name!r} needs probe samples with and without the concept; "
                f"the {len(probe)} probe samples have {int(observed.sum())} with it. Raise num_probe, use less "
                "confounded validation data, or drop 'conexp' from estimators."
            )
        if "tcav" in self.estimators:
            self.layer_names = resolve_layers(pl_module, self.tcav_layers, forward=lambda: pl_module(one))
            examples = int(observed.sum())
            split_balanced(min(examples, self.tcav.examples_per_concept), self.tcav.test_fraction, self.seed)
            if examples < 3:
                raise ValueError(
                    f"CaCECallback: TCAV of {intervention.name!r} needs at least 3 probe images showing "
                    f"the concept; got {examples}. Raise num_probe or drop 'tcav'."
                )
        self.intervention = intervention

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert self.intervention is not None and self.probe is not None
        rows = self.probe.shard_rows(trainer.global_rank, trainer.world_size)
        device = probe.images.device
        target, output = self.target_index, self.output
        out: dict[str, torch.Tensor] = {
            "observed": self.intervention.observed[rows].to(device),
            "labels": self.intervention.labels[rows].to(device),
            "f": class_output(pl_module, probe.images, target, output, self.max_batch).to(device),
        }
        if "ground_truth" in self.estimators:
            assert self._treated is not None and self._control is not None
            out["f_treated"] = class_output(pl_module, self._treated[rows], target, output, self.max_batch).to(device)
            out["f_control"] = class_output(pl_module, self._control[rows], target, output, self.max_batch).to(device)
        if "tcav" in self.estimators:
            full = self.probe.images.to(device)
            concept_images = full[self.intervention.observed.to(device)]
            self.cavs = self.tcav.fit_cavs(
                pl_module, {self.intervention.name: concept_images}, full, layers=self.layer_names, trainer=trainer
            )
            targets = torch.full((probe.images.shape[0],), target, dtype=torch.long, device=device)
            gradients = self.tcav.gradients(pl_module, probe.images, targets, self.layer_names, trainer=trainer)
            for layer, value in directional_derivatives(gradients, self.cavs).items():
                out[f"derivative/{layer}"] = value
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        prefix = self.key_prefix
        scalars: dict[str, float] = {}
        rows: list[list[Any]] = []
        epoch, step = trainer.current_epoch, trainer.global_step
        nan = float("nan")
        if "ground_truth" in self.estimators:
            effects = (results["f_treated"] - results["f_control"]).double()
            stderr = float(effects.std() / math.sqrt(effects.numel())) if effects.numel() > 1 else nan
            scalars[f"{prefix}/ground_truth"] = float(effects.mean())
            scalars[f"{prefix}/ground_truth_stderr"] = stderr
            rows.append([epoch, step, "ground_truth", float(effects.mean()), stderr, nan])
        if "conexp" in self.estimators:
            f, observed = results["f"].double(), results["observed"].bool()
            on, off = f[observed], f[~observed]
            value = float(on.mean() - off.mean())
            stderr = math.sqrt(
                float(on.var() / on.numel() if on.numel() > 1 else 0.0)
                + float(off.var() / off.numel() if off.numel() > 1 else 0.0)
            )
            scalars[f"{prefix}/conexp"] = value
            scalars[f"{prefix}/conexp_stderr"] = stderr
            rows.append([epoch, step, "conexp", value, stderr, nan])
        if "tcav" in self.estimators:
            assert self.cavs is not None
            derivatives = {layer: results[f"derivative/{layer}"] for layer in self.layer_names}
            result = tcav_from_derivatives(
                derivatives, results["labels"], [self.target_index], self.cavs, alpha=self.tcav.alpha
            )
            for row in result.rows():
                key = f"{prefix}/tcav/{row['layer']}"
                scalars[f"{key}/score"] = row["tcav_mean"]
                scalars[f"{key}/p_value"] = row["p_value"]
                scalars[f"{key}/significant"] = float(row["significant"])
                rows.append([epoch, step, f"tcav/{row['layer']}", row["tcav_mean"], row["tcav_std"], row["p_value"]])
        self.table_history.extend(rows)
        if trainer.is_global_zero:
            self.sinks.table(f"{self.namespace}/estimates", list(TABLE_COLUMNS), list(self.table_history), step)
        return scalars

    # ------------------------------------------------------------------ checkpointing
    def extra_state(self) -> dict[str, Any]:
        return {"table": list(self.table_history)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.table_history = list(state.get("table", []))

"""ExplanationQualityCallback: are the maps faithful? Explanation metrics and their chance level, every epoch."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.registry import get_method
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.configured_methods import (
    canonical_method_options,
    canonical_methods,
    configured_options,
    method_layer,
)
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.core import resolve_targets, select_logits
from xai_lightning.evaluation import (
    ExplanationMetric,
    available_metrics,
    build_metric,
    degenerate_maps,
    degenerate_warning,
    metric_direction,
    metric_needs_masks,
    metric_option_names,
)

__all__ = ["DEFAULT_QUALITY_METHODS", "DEFAULT_QUALITY_METRICS", "ExplanationQualityCallback"]

DEFAULT_QUALITY_METHODS = ("saliency", "gradcam")
#: Cheap enough to run every epoch of a study (about 0.2 s per method on 16 probes, SmallCNN, 1 CPU thread).
DEFAULT_QUALITY_METRICS = ("deletion_auc", "insertion_auc", "faithfulness_correlation")


class ExplanationQualityCallback(ObserverCallback):
    """Explanation metrics of several attribution methods on a fixed probe set, with the random-map chance level.

    Every scheduled epoch, each method explains the probe set (its heatmap, ``method.to_map``), and
    each metric of :mod:`xai_lightning.evaluation` scores the maps on the same images; the same
    metric scores seeded random maps (each probe image its own) — the level a method must beat for
    its number to mean anything. All work runs inside the observer guard, batched, so
    the trained weights stay bit-identical. Logged (scalars, mean over the probe set):

    ============================================  =================================================
    ``quality/<method>/<metric>``                 the metric for the method's maps
    ``quality/random/<metric>``                   the metric for random maps (chance level)
    ``quality/table``                             one table per epoch: method, metric, value,
                                                  random, better ("lower"/"higher")
    ============================================  =================================================

    ``<metric>`` is one of ``deletion_auc`` (lower is better), ``insertion_auc`` (higher),
    ``faithfulness_correlation`` (higher), ``infidelity`` (lower), ``max_sensitivity`` (lower),
    ``road_morf`` (lower), ``road_lerf`` (higher), ``pointing_game`` (higher) and
    ``relevance_mass`` (higher) — only those configured. Maps that are all zero, constant or
    non-finite (Grad-CAM of an untrained network) get each metric's documented fallback value
    and one warning per method naming it and its layer.

    Args:
        methods: attribution method names (``xai_lightning.attribution.available_methods()``).
        metrics: metric names (``xai_lightning.evaluation.available_metrics()``); ``pointing_game``
            and ``relevance_mass`` need object masks in the probe data (checked at setup).
        num_probe: probe images, drawn once (seeded).
        every_n_epochs: how often to evaluate.
        target: ``"label"`` (default; ``"predicted"`` without labels), ``"predicted"`` or a class index.
        layer: layer of the CAM family (``"auto"``: the last spatial 4-D output), checked at setup.
        method_options: per-method options, e.g. ``{"integrated_gradients": {"steps": 16}}``.
        metric_options: per-metric options, e.g. ``{"deletion_auc": {"steps": 32, "baseline": "blur"}}``;
            unknown names and options fail at construction with the valid ones.
        random_maps: random maps per probe image for the chance level; each image gets its own,
            seeded by its dataset index, so the logged mean is over ``random_maps × num_probe`` maps.
        seed: seed of the random maps and of the metrics' draws (the same every epoch).
        output_key, max_batch: where the logits are; cap on inputs per forward pass.
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    Example::

        trainer = Trainer(callbacks=[ExplanationQualityCallback(methods=["saliency", "gradcam"])],
                          logger=WandbLogger(offline=True))
    """

    namespace = "quality"

    def __init__(
        self,
        methods: list[str] | tuple[str, ...] = DEFAULT_QUALITY_METHODS,
        metrics: list[str] | tuple[str, ...] = DEFAULT_QUALITY_METRICS,
        num_probe: int = 16,
        every_n_epochs: int = 1,
        target: Literal["label", "predicted"] | int = "label",
        layer: str = "auto",
        method_options: dict[str, dict[str, Any]] | None = None,
        metric_options: dict[str, dict[str, Any]] | None = None,
        random_maps: int = 1,
        seed: int = 0,
        output_key: str | int | None = None,
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
        names = canonical_methods(methods, "ExplanationQualityCallback")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        if not metrics:
            raise ValueError(
                "ExplanationQualityCallback needs at least one metric; see "
                "xai_lightning.evaluation.available_metrics()."
            )
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"Each metric may appear once; got {metrics}")
        if "random" in names:
            raise ValueError("'random' is the name of the chance level; it cannot be a method.")
        valid_metrics = available_metrics()
        for metric in metrics:
            if metric not in valid_metrics:
                raise ValueError(
                    f"Unknown explanation metric {metric!r}; available metrics: {', '.join(valid_metrics)}."
                )
        options: dict[str, dict[str, Any]] = {}
        for metric, values in dict(metric_options or {}).items():
            if metric not in metrics:
                raise ValueError(f"metric_options names {metric!r}, which is not among metrics={metrics}")
            unknown = [key for key in values if key not in metric_option_names(metric)]
            if unknown:
                raise ValueError(
                    f"{metric} has no option(s) {unknown}; valid options: {', '.join(metric_option_names(metric))}."
                )
            options[metric] = dict(values)
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted' or a class index; got {target!r}")
        if random_maps < 1:
            raise ValueError(f"random_maps must be >= 1; got {random_maps}")
        self.methods = names
        self.metrics = metrics
        self.target = target
        self.layer = layer
        self.method_options = canonical_method_options(method_options, names)
        self.metric_options = options
        self.random_maps = random_maps
        self.seed = seed
        self.output_key = output_key
        self.max_batch = max_batch
        self.explainers: dict[str, AttributionMethod] = {}
        self.method_layers: dict[str, str] = {}
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace, methods=tuple(self.methods), metrics=tuple(self.metrics), num_probe=self.num_probe
        )

    def _target(self, probe: ProbeSet) -> Any:
        return "predicted" if self.target == "label" and probe.labels is None else self.target

    def _method_options(self, name: str) -> dict[str, Any]:
        return configured_options(
            name,
            self.method_options.get(name, {}),
            layer=self.layer,
            output_key=self.output_key,
            max_batch=self.max_batch,
            seed=self.probe_seed,
        )

    def _metric(self, name: str, model: torch.nn.Module, method: str | None = None) -> ExplanationMetric:
        options = dict(self.metric_options.get(name, {}))
        valid = metric_option_names(name)
        for key, value in (("output_key", self.output_key), ("max_batch", self.max_batch), ("seed", self.seed)):
            if key in valid:
                options.setdefault(key, value)
        if name == "max_sensitivity":
            name_of_method = method or self.methods[0]
            options.update(method=name_of_method, method_options=self._method_options(name_of_method))
        return build_metric(name, model, **options)

    # ------------------------------------------------------------------ ObserverCallback API
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        needs_masks = [name for name in self.metrics if metric_needs_masks(name)]
        if needs_masks and probe.object_masks is None:
            raise ValueError(
                f"ExplanationQualityCallback: metric(s) {needs_masks} need ground-truth object masks, but the probe "
                "data has none. Use data that yields an 'object_mask' per item (e.g. ConceptWorldDataModule), give "
                "them with callback.set_probe(images, labels, object_masks=...), or drop those metrics."
            )
        if probe.images.dim() != 4 and any(name.startswith("road") for name in self.metrics):
            raise ValueError(f"ROAD imputes pixels of images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        self.explainers = {name: get_method(name, **self._method_options(name)) for name in self.methods}
        one = probe.images[:1].to(pl_module.device)
        # image-only methods on non-image probes and unknown layers fail now
        self.method_layers = {
            name: method_layer(pl_module, explainer, one) for name, explainer in self.explainers.items()
        }
        for name in self.metrics:
            self._metric(name, pl_module, self.methods[0])  # invalid option values fail now
        if isinstance(self.target, int):
            resolve_targets(self.target, select_logits(pl_module(one), self.output_key))

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = select_logits(pl_module(probe.images), self.output_key).float()
        targets = resolve_targets(self._target(probe), logits, probe.labels)
        masks = probe.object_masks
        out: dict[str, torch.Tensor] = {}
        maps = {}
        for name, explainer in self.explainers.items():
            attribution = explainer.attribute(pl_module, probe.images, targets, trainer=trainer)
            assert isinstance(attribution, torch.Tensor)  # no convergence delta was asked for
            maps[name] = explainer.to_map(attribution).float()
            out[f"degenerate/{name}"] = degenerate_maps(maps[name]).float()
        shared = {name: self._metric(name, pl_module) for name in self.metrics if name != "max_sensitivity"}
        for metric_name in self.metrics:
            for name in self.methods:
                metric = shared[metric_name] if metric_name in shared else self._metric(metric_name, pl_module, name)
                out[f"{name}/{metric_name}"] = metric.values(probe.images, maps[name], targets, masks)
            chance = shared[metric_name] if metric_name in shared else self._metric(metric_name, pl_module)
            out[f"random/{metric_name}"] = chance.random_values(
                probe.images, maps[self.methods[0]], targets, self.random_maps, self.seed, masks, probe.indices
            )
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name in [*self.methods, "random"]:
            for metric in self.metrics:
                scalars[f"{self.namespace}/{name}/{metric}"] = float(results[f"{name}/{metric}"].double().mean())
        for name in self.methods:
            count = int(results[f"degenerate/{name}"].sum())
            if count and name not in self._warned:
                self._warned.add(name)
                rank_zero_warn(
                    f"ExplanationQualityCallback, epoch {trainer.current_epoch}: "
                    + degenerate_warning(
                        count,
                        len(probe),
                        f"method {name!r} (layer {self.method_layers.get(name, 'input')!r})",
                        "they get each metric's fallback (a uniform map's value; correlations 0), never NaN",
                    )
                )
        if trainer.is_global_zero:
            rows = [
                [
                    name,
                    metric,
                    scalars[f"{self.namespace}/{name}/{metric}"],
                    scalars[f"{self.namespace}/random/{metric}"],
                    metric_direction(metric),
                ]
                for name in self.methods
                for metric in self.metrics
            ]
            self.sinks.table(
                f"{self.namespace}/table", ["method", "metric", "value", "random", "better"], rows, trainer.global_step
            )
        return scalars

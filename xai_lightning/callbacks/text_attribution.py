"""TextAttributionCallback: per-token attributions of probe sentences, rendered as coloured HTML every epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict

import pytorch_lightning as pl
import torch

from xai_lightning.attribution.layer_attribution import LayerGradientXActivation, LayerIntegratedGradients
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.token_inputs import explainable_tokens, token_ids
from xai_lightning.attribution.token_occlusion import TokenOcclusion
from xai_lightning.attribution.token_surrogate import TokenKernelShap, TokenLime
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.callbacks.probe_captions import probe_captions
from xai_lightning.core import (
    check_target,
    embedding_layer,
    get_layer,
    output_scores,
    resolve_targets,
    split_target,
)
from xai_lightning.evaluation import chance_precision, mass_on_relevant, nanmean, top_k_precision
from xai_lightning.logging import log_html, token_html

__all__ = ["TEXT_METHODS", "TextAttributionCallback"]

TextTarget = Literal["label", "predicted"] | int | Callable[[Any], torch.Tensor]
TextMethod = Literal["integrated_gradients", "gradient_x_input", "occlusion", "lime", "kernel_shap"]


class _SharedOptions(TypedDict):
    """Keyword arguments every text attribution method takes from the callback."""

    output_key: str | int | None
    max_batch: int | None
    seed: int | None


#: The methods, and whether each needs the embedding layer.
TEXT_METHODS: dict[str, bool] = {
    "integrated_gradients": True,
    "gradient_x_input": True,
    "occlusion": False,
    "lime": False,
    "kernel_shap": False,
}


class TextAttributionCallback(ObserverCallback):
    """Token attributions of fixed probe sentences, every ``every_n_epochs`` epochs, as coloured HTML.

    Each method explains every probe sentence (token ids ``(N, T)``, padded with ``pad_id``) in one
    batched call inside the observer guard, so training stays bit-identical:

    ========================  ========================================================================
    ``integrated_gradients``  IG on the word-embedding layer's output, summed per token
                              (:class:`~xai_lightning.attribution.LayerIntegratedGradients`, padding
                              baseline)
    ``gradient_x_input``      gradient × embedding, summed per token
    ``occlusion``             drop in the target's probability when the word is removed
                              (:class:`~xai_lightning.attribution.TokenOcclusion`)
    ``lime``, ``kernel_shap`` surrogates over the words, absent words padded
    ========================  ========================================================================

    Logged keys (the trigger scores need ground truth: a dataset with ``trigger_mask``, as
    :class:`~xai_lightning.data.TriggerText`):

    ==============================================  ============================================
    ``text/tokens`` (HTML)                          one row per probe sentence, one column per
                                                    method; red = evidence for the explained
                                                    class, blue = against; triggers underlined.
                                                    W&B: ``wandb.Html``; other loggers: an
                                                    ``.html`` file per step under ``xai/text/tokens``
    ``text/<method>/top<k>_precision``              mean fraction of each sentence's k best-scored
                                                    tokens that are trigger words
    ``text/<method>/mass_on_triggers``              mean share of positive attribution on triggers
    ``text/chance_precision``                       the same for a random ranking (triggers / tokens)
    ==============================================  ============================================

    Args:
        methods: any of :data:`TEXT_METHODS`.
        num_probe: probe sentences, drawn once (seeded) from ``probe_split``.
        target: ``"label"`` (default; ``"predicted"`` without labels), ``"predicted"``, a class index,
            or (Python API) a callable on the model output returning one score per sentence.
        every_n_epochs: how often.
        embedding_layer: the word embedding (``"auto"``: the ``nn.Embedding`` that receives the token
            ids), needed by the gradient methods; checked at ``setup``.
        pad_id: the padding id (None: the dataset's ``pad_id``, else 0).
        mask_id: the mask token for ``occlusion_mode="mask"`` (None: the dataset's ``mask_id``).
        protected_ids: ids never explained (e.g. BERT's [CLS], [SEP]).
        steps: integration steps of IG.
        occlusion_mode, ngram: token occlusion's ``"remove"``/``"pad"``/``"mask"`` and window.
        num_samples: coalitions of LIME/KernelSHAP.
        top_k: the k of ``top<k>_precision``.
        max_sentences: sentences rendered in the HTML (all are scored).
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on model inputs per pass inside every method.
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    Example::

        trainer = Trainer(callbacks=[TextAttributionCallback(methods=["integrated_gradients", "occlusion"])],
                          logger=WandbLogger(offline=True))
    """

    namespace = "text"

    def __init__(
        self,
        methods: list[TextMethod] | tuple[TextMethod, ...] = ("integrated_gradients", "occlusion"),
        num_probe: int = 16,
        target: TextTarget = "label",
        every_n_epochs: int = 1,
        embedding_layer: str = "auto",
        pad_id: int | None = None,
        mask_id: int | None = None,
        protected_ids: list[int] | tuple[int, ...] = (),
        steps: int = 32,
        occlusion_mode: Literal["remove", "pad", "mask"] = "remove",
        ngram: int = 1,
        num_samples: int = 500,
        top_k: int = 1,
        max_sentences: int = 8,
        output_key: str | int | None = None,
        max_batch: int | None = None,
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
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [name for name in methods if name not in TEXT_METHODS]
        if unknown or not methods:
            raise ValueError(f"Unknown text attribution method(s) {unknown}; choose from {list(TEXT_METHODS)}.")
        if len(set(methods)) != len(methods):
            raise ValueError(f"Each method may appear once; got {methods}")
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted', a class index or a callable; got {target!r}")
        if occlusion_mode not in ("remove", "pad", "mask"):
            raise ValueError(f"occlusion_mode must be 'remove', 'pad' or 'mask'; got {occlusion_mode!r}")
        for name, value, low in (
            ("steps", steps, 1),
            ("ngram", ngram, 1),
            ("num_samples", num_samples, 2),
            ("top_k", top_k, 1),
            ("max_sentences", max_sentences, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}; got {value}")
        self.methods = methods
        self.target = target
        self.embedding_layer = embedding_layer
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.protected_ids = tuple(protected_ids)
        self.steps = steps
        self.occlusion_mode = occlusion_mode
        self.ngram = ngram
        self.num_samples = num_samples
        self.top_k = top_k
        self.max_sentences = max_sentences
        self.output_key = output_key
        self.max_batch = max_batch
        self.explainers: dict[str, AttributionMethod] = {}
        self.vocabulary: list[str] | None = None
        self.trigger_mask: torch.Tensor | None = None
        self.layer_name: str | None = None
        self._pad = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, methods=tuple(self.methods), num_probe=self.num_probe)

    def _target(self, probe: ProbeSet) -> Any:
        if self.target == "label" and probe.labels is None:
            return "predicted"
        return self.target

    # ------------------------------------------------------------------ setup
    def _dataset(self, trainer: pl.Trainer) -> Any:
        if self._given_probe is not None:
            return None
        source = find_probe_dataset(trainer, self.probe_split)
        return getattr(source, "dataset", source)

    def _build(self, name: str) -> AttributionMethod:
        common: _SharedOptions = {"output_key": self.output_key, "max_batch": self.max_batch, "seed": self.probe_seed}
        if name == "integrated_gradients":
            assert self.layer_name is not None  # prepare() resolves the embedding layer of layer methods
            return LayerIntegratedGradients(
                layer=self.layer_name,
                steps=self.steps,
                baseline="pad",
                pad_id=self._pad,
                protected_ids=self.protected_ids,
                **common,
            )
        if name == "gradient_x_input":
            assert self.layer_name is not None
            return LayerGradientXActivation(layer=self.layer_name, pad_id=self._pad, **common)
        if name == "occlusion":
            return TokenOcclusion(
                mode=self.occlusion_mode,
                ngram=self.ngram,
                pad_id=self._pad,
                mask_id=self.mask_id,
                protected_ids=self.protected_ids,
                **common,
            )
        surrogate = TokenLime if name == "lime" else TokenKernelShap
        return surrogate(num_samples=self.num_samples, pad_id=self._pad, protected_ids=self.protected_ids, **common)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 2:
            raise ValueError(
                f"TextAttributionCallback explains token ids (N, T); the probe is {tuple(probe.images.shape)}. "
                "Use data whose items hold 1-D token-id tensors (e.g. TriggerTextDataModule)."
            )
        ids = token_ids(probe.images, "TextAttributionCallback")
        dataset = self._dataset(trainer)
        self._pad = self.pad_id if self.pad_id is not None else int(getattr(dataset, "pad_id", 0))
        if self.mask_id is None and dataset is not None and getattr(dataset, "mask_id", None) is not None:
            self.mask_id = int(dataset.mask_id)
        if self.occlusion_mode == "mask" and "occlusion" in self.methods and self.mask_id is None:
            raise ValueError("occlusion_mode='mask' needs mask_id (the dataset has none); pass mask_id=.")
        vocabulary = getattr(dataset, "vocabulary", None)
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        trigger_mask = getattr(dataset, "trigger_mask", None)
        self.trigger_mask = None
        if (
            isinstance(trigger_mask, torch.Tensor)
            and probe.indices is not None
            and trigger_mask.shape[-1] == ids.shape[1]
        ):
            self.trigger_mask = trigger_mask[probe.indices.cpu()].bool()
        one = ids[:1].to(pl_module.device)
        if any(TEXT_METHODS[name] for name in self.methods):
            if self.embedding_layer == "auto":
                self.layer_name = embedding_layer(pl_module, lambda: pl_module(one), one)
            else:
                get_layer(pl_module, self.embedding_layer)  # unknown names list the valid ones
                self.layer_name = self.embedding_layer
        check_target(
            self._target(probe),
            pl_module(one),
            self.output_key,
            None if probe.labels is None else probe.labels[:1],
            batch=1,
        )
        self.explainers = {name: self._build(name) for name in self.methods}

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        ids = token_ids(probe.images)
        score_fn, target = split_target(self._target(probe))
        with torch.no_grad():
            output = pl_module(ids)
        logits = output_scores(output, self.output_key, score_fn, batch=ids.shape[0]).float()
        targets = resolve_targets(target, logits, probe.labels)
        explained = targets if score_fn is None else score_fn
        out = {"logits": logits, "targets": targets}
        for name, explainer in self.explainers.items():
            attribution = explainer.attribute(pl_module, ids, explained, trainer=trainer)
            assert isinstance(attribution, torch.Tensor)  # no convergence delta was asked for
            out[f"scores/{name}"] = explainer.to_map(attribution).float()
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        ids = token_ids(probe.images).cpu()
        valid = explainable_tokens(ids, self._pad, self.protected_ids)
        scalars: dict[str, float] = {}
        if self.trigger_mask is not None:
            relevant = self.trigger_mask & valid
            scalars[f"{self.namespace}/chance_precision"] = nanmean(chance_precision(relevant, valid))
            for name in self.methods:
                scores = results[f"scores/{name}"]
                prefix = f"{self.namespace}/{name}"
                scalars[f"{prefix}/top{self.top_k}_precision"] = nanmean(
                    top_k_precision(scores, relevant, valid, self.top_k)
                )
                scalars[f"{prefix}/mass_on_triggers"] = nanmean(mass_on_relevant(scores, relevant, valid))
        if trainer.is_global_zero:
            self._log_html(trainer, probe, ids, valid, results)
        return scalars

    def _words(self, ids: torch.Tensor) -> list[str]:
        if self.vocabulary is None:
            return [f"#{int(i)}" for i in ids]
        return [self.vocabulary[int(i)] if 0 <= int(i) < len(self.vocabulary) else f"#{int(i)}" for i in ids]

    def _log_html(
        self,
        trainer: pl.Trainer,
        probe: ProbeSet,
        ids: torch.Tensor,
        valid: torch.Tensor,
        results: dict[str, torch.Tensor],
    ) -> None:
        shown = min(self.max_sentences, len(probe))
        sentences: list[list[str]] = []
        scores: dict[str, list[torch.Tensor]] = {name: [] for name in self.methods}
        marks: list[list[bool]] = []  # the trigger tokens of each sentence, when the data marks them
        for row in range(shown):
            keep = ids[row] != self._pad
            sentences.append(self._words(ids[row][keep]))
            for name in self.methods:
                scores[name].append(results[f"scores/{name}"][row][keep])
            if self.trigger_mask is not None:
                marks.append(self.trigger_mask[row][keep].tolist())
        captions = probe_captions(probe, results["logits"], results["targets"], shown, explained_tag="explained")
        document = token_html(
            sentences,
            scores,
            captions=captions,
            relevant=None if self.trigger_mask is None else marks,
            title=f"Token attributions, epoch {trainer.current_epoch}, step {trainer.global_step}",
        )
        log_html(self.sinks, f"{self.namespace}/tokens", document, trainer.global_step)

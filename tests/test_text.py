"""Text explanations: token occlusion, embedding attributions, LIME/KernelSHAP over tokens, and the
TriggerText ground truth.

Independent checks: a bag-of-words linear model, whose exact answers are closed forms (occlusion of
a word = its weight; per vocabulary word, weight × count; Shapley values = weights); Captum's
FeatureAblation, LayerIntegratedGradients and LayerGradientXActivation; IG's completeness axiom;
and TriggerText's known trigger words for a trained model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from xai_lightning.attribution import (
    LayerGradientXActivation,
    LayerIntegratedGradients,
    TokenKernelShap,
    TokenLime,
    TokenOcclusion,
    token_scores,
    word_attribution,
)
from xai_lightning.data import TriggerText
from xai_lightning.evaluation import chance_precision, mass_on_relevant, top_k_precision
from xai_lightning.models import TextClassifier

VOCAB = 12
PAD, MASK = 0, 1


class BagOfWords(nn.Module):
    """logit_c = Σ_t w[token_t, c] + b_c; padding has weight 0 (it is no word)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randn(VOCAB, 2, generator=generator, dtype=torch.float64)
        weights[PAD] = 0
        self.weight = nn.Parameter(weights)
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(ids, VOCAB).double().sum(1) @ self.weight + self.bias


SENTENCES = torch.tensor(
    [
        [3, 4, 3, 5, 3, 0, 0, 0],
        [6, 6, 2, 7, 9, 11, 10, 0],
        [8, 0, 0, 0, 0, 0, 0, 0],
    ]
)


@pytest.mark.parametrize("mode", ["remove", "pad"])
def test_token_occlusion_on_a_bag_of_words_equals_each_words_weight_times_its_count(mode):
    model = BagOfWords()
    attributions = TokenOcclusion(mode=mode, score="logit").attribute(model, SENTENCES, 1)
    weights = model.weight.detach()[:, 1]
    real = SENTENCES != PAD
    torch.testing.assert_close(attributions.double(), torch.where(real, weights[SENTENCES], 0.0), atol=1e-6, rtol=0)
    per_word = word_attribution(attributions.double(), SENTENCES, VOCAB)
    counts = torch.stack([torch.bincount(row[row != PAD], minlength=VOCAB) for row in SENTENCES]).double()
    torch.testing.assert_close(per_word, counts * weights, atol=1e-6, rtol=0)  # word 3 occurs 3 times: 3·w₃


def test_masking_with_a_mask_token_removes_the_word_and_adds_the_mask():
    model = BagOfWords()
    weights = model.weight.detach()[:, 0]
    attributions = TokenOcclusion(mode="mask", mask_id=MASK, score="logit").attribute(model, SENTENCES, 0)
    expected = torch.where(SENTENCES != PAD, weights[SENTENCES] - weights[MASK], 0.0)
    torch.testing.assert_close(attributions.double(), expected, atol=1e-6, rtol=0)


def test_ngram_occlusion_drops_the_windows_sum_and_tokens_average_their_windows():
    model = BagOfWords()
    weights = model.weight.detach()[:, 1]
    result = TokenOcclusion(ngram=2, score="logit").explain(model, SENTENCES, 1)
    first = weights[SENTENCES[0, :5]]
    torch.testing.assert_close(result.window_drops[0, :4].double(), first[:-1] + first[1:], atol=1e-6, rtol=0)
    assert torch.isnan(result.window_drops[0, 4:]).all() and result.window_starts[0].tolist()[:5] == [0, 1, 2, 3, -1]
    windows = first[:-1] + first[1:]
    expected = torch.stack(
        [
            windows[0],
            (windows[0] + windows[1]) / 2,
            (windows[1] + windows[2]) / 2,
            (windows[2] + windows[3]) / 2,
            windows[3],
        ]
    )
    torch.testing.assert_close(result.attributions[0, :5].double(), expected, atol=1e-6, rtol=0)
    # A one-word sentence has one window: the word itself.
    torch.testing.assert_close(result.attributions[2, 0].double(), weights[8], atol=1e-6, rtol=0)


def test_protected_tokens_and_word_groups():
    model = BagOfWords()
    weights = model.weight.detach()[:, 1]
    ids = torch.tensor([[2, 5, 6, 7, 3, 0]])  # 2 = [CLS], 3 = [SEP]; tokens 6, 7 form one word
    words = torch.tensor([[-1, 0, 1, 1, -1, -1]])
    result = TokenOcclusion(score="logit", protected_ids=(2, 3)).explain(model, ids, 1, word_ids=words)
    expected = torch.tensor([[0.0, weights[5], weights[6] + weights[7], weights[6] + weights[7], 0.0, 0.0]])
    torch.testing.assert_close(result.attributions.double(), expected.double(), atol=1e-6, rtol=0)


def test_token_occlusion_with_padding_equals_captums_feature_ablation():
    from captum.attr import FeatureAblation

    torch.manual_seed(0)
    model = TextClassifier(VOCAB, 2, dim=16, depth=1, max_length=8).eval()
    ours = TokenOcclusion(mode="pad", score="probability").attribute(model, SENTENCES, 1)

    def probability(ids):
        return model(ids).softmax(1)[:, 1]

    mask = torch.arange(8).expand(3, -1)
    captum = FeatureAblation(probability).attribute(
        SENTENCES, baselines=PAD, feature_mask=mask, perturbations_per_eval=4
    )
    captum = torch.where(SENTENCES != PAD, captum, 0.0)  # padding is no token: we never occlude it
    torch.testing.assert_close(ours, captum.float(), atol=1e-6, rtol=1e-5)


def test_trimming_padding_is_exact_for_a_padding_blind_model_and_skipped_for_others():
    torch.manual_seed(1)
    model = TextClassifier(VOCAB, 2, dim=16, depth=2, max_length=8).eval()
    trimmed = TokenOcclusion(trim_padding=True, tokens_per_pass=8).explain(model, SENTENCES, 1)
    full = TokenOcclusion(trim_padding=False).explain(model, SENTENCES, 1)
    torch.testing.assert_close(trimmed.attributions, full.attributions, atol=1e-6, rtol=1e-5)
    assert TokenOcclusion(tokens_per_pass=8).explain(model, SENTENCES, 1).trimmed

    class CountsPadding(nn.Module):  # the padding changes the logits: trimming would change the answer
        def forward(self, ids):
            padding = (ids == PAD).double().sum(1)
            return torch.stack([-padding, padding + ids.double().sum(1) / 10], 1)

    auto = TokenOcclusion(score="logit").explain(CountsPadding(), SENTENCES, 1)
    assert not auto.trimmed
    torch.testing.assert_close(
        auto.attributions, TokenOcclusion(score="logit", trim_padding=False).attribute(CountsPadding(), SENTENCES, 1)
    )


def test_token_occlusion_explains_the_predicted_class_read_from_the_sentences_own_pass():
    torch.manual_seed(2)
    model = TextClassifier(VOCAB, 3, dim=16, depth=1, max_length=8).eval()
    with torch.no_grad():
        probabilities = model(SENTENCES).softmax(1)
    result = TokenOcclusion(mode="pad", tokens_per_pass=8).explain(model, SENTENCES, "predicted")
    assert torch.equal(result.targets, probabilities.argmax(1))
    # Scored in inference mode, returned as ordinary tensors (usable with autograd afterwards).
    assert not any(t.is_inference() for t in (result.attributions, result.original, result.window_drops))
    torch.testing.assert_close(result.original, probabilities.max(1).values, atol=1e-6, rtol=1e-5)
    # The same drops as explaining those classes given explicitly.
    given = TokenOcclusion(mode="pad", tokens_per_pass=8).explain(model, SENTENCES, probabilities.argmax(1))
    torch.testing.assert_close(result.window_drops, given.window_drops, equal_nan=True)


@pytest.mark.parametrize("baseline", ["zero", "pad"])
def test_ig_on_the_embedding_layer_is_complete_and_equals_captum(baseline):
    from captum.attr import LayerIntegratedGradients as CaptumLayerIG

    torch.manual_seed(2)
    model = TextClassifier(VOCAB, 2, dim=16, depth=2, max_length=8).eval()
    ours, delta = LayerIntegratedGradients(steps=64, baseline=baseline).attribute(
        model, SENTENCES, 1, return_convergence_delta=True
    )
    assert ours.shape == (3, 8, 16)
    logits = model(SENTENCES)[:, 1]
    with torch.no_grad():
        base_embedding = torch.zeros(3, 8, 16) if baseline == "zero" else model.embedding(torch.zeros_like(SENTENCES))
    # Completeness: Σ IG = F(x) − F(x; baseline embeddings), independently of our delta.
    handle = model.embedding.register_forward_hook(lambda m, i, o: base_embedding)
    try:
        empty = model(SENTENCES)[:, 1]
    finally:
        handle.remove()
    torch.testing.assert_close(ours.sum((1, 2)), (logits - empty).detach(), atol=2e-4, rtol=1e-3)
    assert delta.abs().max() < 2e-4
    captum = (
        CaptumLayerIG(model, model.embedding).attribute(
            SENTENCES,
            baselines=torch.zeros_like(SENTENCES),
            target=1,
            n_steps=64,
            method="gausslegendre",
        )
        if baseline == "pad"
        else None
    )
    if captum is not None:  # Captum's baseline is a token-id tensor: the padding ids
        torch.testing.assert_close(ours, captum.float(), atol=1e-5, rtol=1e-4)
    assert token_scores(ours).shape == (3, 8)
    assert (ours[SENTENCES == PAD] == 0).all()


def test_gradient_times_embedding_equals_captums_layer_gradient_x_activation():
    from captum.attr import LayerGradientXActivation as CaptumLayerGxA

    torch.manual_seed(3)
    model = TextClassifier(VOCAB, 2, dim=16, depth=1, max_length=8).eval()
    ours = LayerGradientXActivation().attribute(model, SENTENCES, 0)
    captum = CaptumLayerGxA(model, model.embedding).attribute(SENTENCES, target=0)
    captum = captum * (SENTENCES != PAD).unsqueeze(-1)
    torch.testing.assert_close(ours, captum, atol=1e-6, rtol=1e-5)


def test_kernel_shap_over_tokens_is_exact_on_a_bag_of_words_and_lime_keeps_protected_tokens():
    model = BagOfWords()
    weights = model.weight.detach()[:, 1]
    shap = TokenKernelShap(num_samples=256, score="logit").explain(model, SENTENCES, 1)
    assert shap.num_features.tolist() == [5, 7, 1]
    torch.testing.assert_close(
        shap.attributions.double(), torch.where(SENTENCES != PAD, weights[SENTENCES], 0.0), atol=1e-5, rtol=0
    )
    lime = TokenLime(num_samples=200, protected_ids=(2,), seed=0).attribute(model, SENTENCES, 1)
    assert lime.shape == SENTENCES.shape and (lime[SENTENCES == 2] == 0).all() and (lime[SENTENCES == PAD] == 0).all()


def test_trigger_text_is_seeded_and_its_label_is_decided_by_its_trigger_words():
    data = TriggerText(400, seed=7, spurious_word="indeed", spurious_p=0.8)
    again = TriggerText(400, seed=7, spurious_word="indeed", spurious_p=0.8)
    assert torch.equal(data.ids, again.ids) and torch.equal(data.labels, again.labels)
    for row in range(len(data)):
        triggers = data.ids[row][data.trigger_mask[row]]
        assert 1 <= triggers.numel() <= 2
        assert torch.isin(triggers, data.trigger_ids[data.labels[row]]).all()
        others = data.ids[row][~data.trigger_mask[row]]
        assert not torch.isin(others, data.trigger_ids).any()
        assert int(data.lengths[row]) == int((data.ids[row] != data.pad_id).sum())
    present = data.spurious_mask.any(1)
    agreement = (present == (data.labels == 1)).float().mean()
    assert 0.85 < agreement < 0.95  # 0.8 + 0.2 · 1/2 = 0.9 expected
    assert data.decode(data.ids[0])[0] in data.vocabulary


@pytest.fixture(scope="module")
def trained_text_model():
    """TextClassifier trained on TriggerText (plain loop, ~3 s): validation accuracy ≥ 0.97 on seeds 0–2."""
    torch.manual_seed(0)
    train, val = TriggerText(1500, seed=0), TriggerText(200, seed=1)
    model = TextClassifier(train.vocab_size, 2, dim=32, depth=1, heads=2, max_length=24)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), 64):
            rows = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(train.ids[rows]), train.labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = float((model(val.ids).argmax(1) == val.labels).float().mean())
    assert accuracy > 0.95, f"the text model did not train (accuracy {accuracy:.3f})"
    return model, val


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input", "occlusion"])
def test_a_trained_models_top_tokens_hit_the_trigger_words_far_above_chance(trained_text_model, method):
    model, val = trained_text_model
    explainer = {
        "integrated_gradients": LayerIntegratedGradients(steps=16, baseline="pad"),
        "gradient_x_input": LayerGradientXActivation(),
        "occlusion": TokenOcclusion(),
    }[method]
    scores = explainer.to_map(explainer.attribute(model, val.ids, val.labels))
    valid = val.ids != val.pad_id
    precision = top_k_precision(scores, val.trigger_mask, valid).nanmean()
    chance = chance_precision(val.trigger_mask, valid).mean()
    # Measured on seeds 0–2: 0.93–0.99 against a chance level of 0.10–0.11.
    assert precision > 0.8 and precision > 5 * chance, (precision, chance)
    assert mass_on_relevant(scores, val.trigger_mask, valid).nanmean() > 0.5


def test_top_k_precision_and_chance_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.1, 0.0]])
    relevant = torch.tensor([[False, True, False, False], [False, False, True, False]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    torch.testing.assert_close(top_k_precision(scores, relevant, valid, k=1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(top_k_precision(scores, relevant, valid, k=2), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(chance_precision(relevant, valid), torch.tensor([1 / 3, 1 / 4]))


def test_the_library_imports_without_transformers():
    """transformers is an optional extra ([transformers]) used by tests only: no module imports it."""
    root = Path(__file__).resolve().parents[1] / "xai_lightning"
    importing = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(name == "transformers" or name.startswith("transformers.") for name in names):
                importing.append(str(path.relative_to(root)))
    assert not importing, importing

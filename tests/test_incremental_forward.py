"""Exact incremental occlusion (Krypton): the patch-wise forward must equal the plain forward.

Evidence is independent of the implementation: every check compares with the model's own plain
forward pass on explicitly occluded images (or with Captum's Occlusion, in
test_attribution_captum.py), on models whose BatchNorm statistics are randomised so activations
are far from trivial. A mutation (receptive fields not grown) shows the comparison can fail.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ViewsItsInput
from torch import nn

import xai_lightning.attribution.incremental_forward as incremental_forward
from xai_lightning import CifarResNet, SmallCNN
from xai_lightning.attribution import Occlusion, attribute
from xai_lightning.attribution.incremental_forward import IncrementalForward, trace_leading_chain
from xai_lightning.attribution.occlusion import occlusion_windows, window_boxes
from xai_lightning.models import Normalize


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.2)
        if isinstance(module, nn.Linear):  # an untrained head barely responds to occlusion
            module.weight.data.mul_(30.0)
    return model.eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise(SmallCNN(num_classes=5, width=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return _randomise(CifarResNet((1, 1), (8, 16), num_classes=5))


def exotic_chain() -> nn.Module:
    """Stride, dilation, groups, asymmetric kernels, 'same' padding, padded ceil-mode max-pool."""
    torch.manual_seed(0)
    return _randomise(
        nn.Sequential(
            Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            nn.MaxPool2d(2, stride=1, padding=1),  # pads with −∞ on inputs that are often negative: 33×33
            nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2)),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=4),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),  # pads with −∞ (its inputs can be negative)
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 1, stride=2),
            nn.Identity(),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 4),
        )
    )


def plain_logits(model, inputs, masks, baselines, examples, windows):
    occluded = torch.where(masks[windows], baselines[examples], inputs[examples])
    with torch.no_grad():
        return model(occluded)


def incremental_and_plain(model, inputs, window, stride, max_patch_fraction=0.5, keep=None):
    masks = occlusion_windows(inputs.shape[1:], window, stride)
    if keep is not None:
        masks = masks[keep(window_boxes(masks))]
    baselines = torch.rand_like(inputs)
    incremental, why = IncrementalForward.build(
        model, inputs, window_boxes(masks), max_patch_fraction=max_patch_fraction
    )
    assert incremental is not None, why
    count = masks.shape[0]
    index = torch.arange(inputs.shape[0] * count)
    examples, windows = index // count, index % count
    patch = torch.where(
        incremental.crop(masks, windows, windows),
        incremental.crop(baselines, examples, windows),
        incremental.crop(inputs, examples, windows),
    )
    with torch.no_grad():
        ours = incremental.logits(examples, windows, patch)
    return incremental, ours, plain_logits(model, inputs, masks, baselines, examples, windows)


def assert_logits_equal(ours, plain):
    assert plain.std() > 1e-2, "vacuous: the logits hardly vary"
    torch.testing.assert_close(ours, plain, atol=1e-5 * max(1.0, float(plain.abs().max())), rtol=0)


CASES = [  # (window (C, h, w), stride): overlapping, cropped at the border, non-square, one channel
    ((3, 8, 8), (3, 4, 4)),
    ((3, 7, 7), (3, 5, 5)),
    ((3, 5, 9), (3, 3, 6)),
    ((1, 6, 4), (1, 6, 3)),
]


@pytest.mark.parametrize("window,stride", CASES)
@pytest.mark.parametrize("build", [small_cnn, resnet, exotic_chain])
def test_incremental_logits_equal_plain_forward(build, window, stride):
    model = build()
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    incremental, ours, plain = incremental_and_plain(model, inputs, window, stride, max_patch_fraction=1.0)
    assert any(layer.kind == "conv" for layer in incremental.layers)
    assert_logits_equal(ours, plain)


def test_windows_that_change_nothing():
    """A 1×1 stride-2 convolution padded by 1 never reads even positions: occluding them changes
    nothing downstream, and the patch of such windows is an unchanged position, recomputed."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 9 * 9, 3),
    ).eval()
    inputs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    even = lambda boxes: (boxes[:, 0] % 2 == 0) & (boxes[:, 2] % 2 == 0)  # noqa: E731
    _, ours, plain = incremental_and_plain(model, inputs, (3, 1, 1), (3, 1, 1), max_patch_fraction=1.0, keep=even)
    assert_logits_equal(ours, plain)


def test_non_square_images_and_every_stopping_point():
    model = small_cnn()
    inputs = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    counts = set()
    for fraction in (0.1, 0.3, 0.5, 0.8, 1.0):
        incremental, ours, plain = incremental_and_plain(model, inputs, (3, 6, 10), (3, 5, 7), fraction)
        counts.add(incremental.count)
        assert_logits_equal(ours, plain)
    assert len(counts) >= 3  # the check covers chains ending at different layers


def test_chains_of_our_models():
    x = torch.rand(2, 3, 32, 32)
    chain = trace_leading_chain(small_cnn(), x)
    assert [layer.name for layer in chain.layers][:4] == ["features.0", "features.1", "features.2", "features.3"]
    assert chain.layers[-1].name == "features.20" and "AdaptiveAvgPool2d" in chain.reason
    # The ResNet's stem output is also read by the first block's shortcut: the chain is the stem.
    chain = trace_leading_chain(resnet(), x)
    assert [layer.name for layer in chain.layers] == ["normalize", "stem.0", "stem.1", "stem.2"]
    assert "layer1.0.shortcut" in chain.reason
    # Where the incremental part stops: before the first layer whose patch covers > half its map.
    masks = occlusion_windows((3, 32, 32), (3, 8, 8), (3, 4, 4))
    incremental, _ = IncrementalForward.build(small_cnn(), x, window_boxes(masks), max_patch_fraction=0.5)
    assert incremental.layers[-1].name == "features.13" and "features.14" in incremental.reason


class InputReadAgain(nn.Module):
    """Reads its input outside the conv chain (invisible to module hooks)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)) + x.mean())


class InnerActivationReadAgain(InputReadAgain):
    def forward(self, x):
        inner = self.features[1](self.features[0](x))
        return self.head(self.features[2](inner).mean((2, 3)) + inner.mean((2, 3)))


class ScaledInput(InputReadAgain):
    def forward(self, x):
        return self.head(self.features(2 * x).mean((2, 3)))


def train_mode_batchnorm():
    """A train-mode BatchNorm mixes the rows of a batch: the chain stops before it."""
    return nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2)
    ).train()


@pytest.mark.parametrize(
    "build,reason",
    [
        (InputReadAgain, "reads the input or an inner activation"),
        (InnerActivationReadAgain, "reads the input or an inner activation"),
        (ScaledInput, "no convolution"),
        (train_mode_batchnorm, "train mode"),
    ],
)
def test_unanalysable_models_are_declined_with_a_reason(build, reason):
    torch.manual_seed(0)
    model = build()
    x = torch.rand(2, 3, 16, 16)
    masks = occlusion_windows((3, 16, 16), (3, 4, 4), (3, 4, 4))
    incremental, why = IncrementalForward.build(model, x, window_boxes(masks))
    assert incremental is None and reason in why
    assert all("forward" not in module.__dict__ for module in model.modules())  # forwards restored


def test_occlusion_falls_back_or_raises():
    torch.manual_seed(0)
    model = InputReadAgain().eval()
    x, t = torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 0])
    plain = attribute(model, x, t, "occlusion", window=4, stride=4, score="logit", incremental=False)
    auto = attribute(model, x, t, "occlusion", window=4, stride=4, score="logit", incremental="auto")
    torch.testing.assert_close(auto, plain, atol=0, rtol=0)
    with pytest.raises(ValueError, match="incremental='auto'"):
        attribute(model, x, t, "occlusion", window=4, stride=4, incremental=True)
    with pytest.raises(ValueError, match="not images"):
        attribute(nn.Linear(6, 2), torch.randn(2, 6), 0, "occlusion", window=2, stride=2, incremental=True)
    with pytest.raises(ValueError, match="incremental must be"):
        Occlusion(incremental="yes")


@pytest.mark.parametrize("build,score", [(small_cnn, "logit"), (small_cnn, "probability"), (resnet, "logit")])
def test_occlusion_attributions_equal_in_both_modes(build, score):
    model = build()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for window, stride in [(8, 4), ((6, 10), (5, 7))]:
        options = dict(window=window, stride=stride, baseline="mean", score=score, max_batch=37)
        plain = attribute(model, x, "predicted", "occlusion", incremental=False, **options)
        ours = attribute(model, x, "predicted", "occlusion", incremental=True, **options)
        assert plain.abs().max() > 2e-3, "vacuous: occlusion hardly changes the scores"
        torch.testing.assert_close(ours, plain, atol=1e-4 * float(plain.abs().max()), rtol=0)


def test_the_comparison_can_fail(monkeypatch):
    """Mutation: ignoring how far each layer spreads a change must break the equality above."""
    original = incremental_forward._propagate

    def no_receptive_field(layer, previous):
        plan = original(layer, previous)
        if layer.geometry is None:
            return plan
        size = tuple(max(1, s - 2) for s in plan.size)
        return incremental_forward._Plan(size, plan.start, plan.changed)

    monkeypatch.setattr(incremental_forward, "_propagate", no_receptive_field)
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, ours, plain = incremental_and_plain(small_cnn(), inputs, (3, 8, 8), (3, 4, 4))
    assert (ours - plain).abs().max() > 1e-3


def test_auto_keeps_the_plain_path_when_the_saving_is_small():
    model = resnet()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    masks = occlusion_windows((3, 32, 32), (3, 8, 8), (3, 4, 4))
    incremental, why = IncrementalForward.build(model, x, window_boxes(masks), min_saving=0.3)
    assert incremental is None and "would save 9%" in why  # the stem of this small ResNet (ResNet-20: 1%)
    options = dict(window=8, stride=4, score="logit")
    torch.testing.assert_close(
        attribute(model, x, 0, "occlusion", incremental="auto", **options),
        attribute(model, x, 0, "occlusion", incremental=False, **options),
        atol=0,
        rtol=0,
    )
    incremental, _ = IncrementalForward.build(small_cnn(), x, window_boxes(masks), min_saving=0.3)
    assert incremental is not None


def test_models_that_need_the_standard_layout_get_it():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = ViewsItsInput().eval()
    x = torch.rand(2, 3, 8, 8)
    ours = attribute(model, x, 1, "occlusion", window=2, stride=2, baseline=0.0, score="logit")
    theirs = captum_attr.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2))
    assert theirs.abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_training_with_incremental_occlusion_gives_bit_identical_weights(tmp_path, monkeypatch):
    """The chain's forwards are replaced only for the explanation's own calls (and restored)."""
    from conftest import assert_bit_identical, train_weights

    from xai_lightning import AttributionCallback

    calls = []
    logits = IncrementalForward.logits
    monkeypatch.setattr(IncrementalForward, "logits", lambda self, *args: calls.append(1) or logits(self, *args))

    data = dict(num_train=96, num_val=32)
    callback = AttributionCallback(
        methods=["occlusion"],
        num_probe=4,
        method_options={"occlusion": {"window": 8, "stride": 4, "incremental": True}},
    )
    reference = train_weights(tmp_path / "plain", [], epochs=2, dropout=0.5, **data)
    observed = train_weights(tmp_path / "observed", [callback], epochs=2, dropout=0.5, **data)
    assert calls, "the callback did not take the incremental path"
    assert_bit_identical(reference, observed)

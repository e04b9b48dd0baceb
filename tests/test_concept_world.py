"""ConceptWorld: exact masks, interventions that change only their concept, seeds, spurious correlation."""

from __future__ import annotations

import pytest
import torch

from xai_lightning.data import ConceptWorld, ConceptWorldDataModule, DigitsDataModule, HandwrittenDigits
from xai_lightning.data.batch import replace_inputs, unpack_batch


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(300, seed=3, distractor_p=0.5, caption_p=0.5)


def changed_pixels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).any(dim=1)  # (N, H, W)


def test_object_mask_is_exactly_the_rendered_object_pixels(world):
    # Re-colouring the object changes every object pixel (ink and off-ink shades) and nothing else.
    index = torch.arange(len(world))
    new_colour = ((world.latent.colour + 1) % len(world.colours)).tolist()
    recoloured = world.intervene(index, colour=new_colour)
    object_masks = world.masks(index)[:, world.concept_index("object")]
    assert torch.equal(changed_pixels(world.images, recoloured["images"]), object_masks)
    assert object_masks.flatten(1).any(1).all()


def test_object_pixels_carry_the_object_colour(world):
    palette = torch.tensor(list(world.colours.values()))
    for i in range(20):
        mask = world.masks([i])[0, world.concept_index("object")]
        rgb = palette[world.latent.colour[i]].view(3, 1)
        pixels = world.images[i][:, mask]
        is_ink = torch.isclose(pixels, rgb).all(0)
        is_shade = torch.isclose(pixels, 0.38 * rgb).all(0)
        assert (is_ink | is_shade).all()


@pytest.mark.parametrize(
    "change, concepts",
    [
        ({"texture": "striped"}, ["object"]),
        ({"shape": "square"}, ["object"]),
        ({"background": "grid"}, ["background"]),
        ({"caption": -1}, ["caption"]),
        ({"distractor": False}, ["distractor"]),
        ({"centre": [0.5, 0.5]}, ["object"]),
    ],
)
def test_interventions_change_only_the_pixels_of_their_concept(world, change, concepts):
    index = torch.arange(len(world))
    before = world.masks(index)
    after = world.intervene(index, **change)
    allowed = torch.zeros_like(before[:, 0])
    for concept in concepts:
        k = world.concept_index(concept)
        allowed |= before[:, k] | after["masks"][:, k]
    if "shape" in change or "centre" in change:
        # The moved/reshaped object can uncover the distractor or background beneath it only.
        allowed |= before[:, world.concept_index("object")] | after["masks"][:, world.concept_index("object")]
    changed = changed_pixels(world.images, after["images"])
    assert not (changed & ~allowed).any()
    assert changed.any()


def test_intervened_latent_changes_only_the_named_field(world):
    index = torch.arange(10)
    after = world.intervene(index, colour="blue", shape=[0] * 10)
    assert (after["latent"].colour == list(world.colours).index("blue")).all()
    assert (after["latent"].shape == 0).all()
    assert torch.equal(after["latent"].texture, world.latent.texture[index])
    assert torch.equal(after["labels"], after["latent"].shape)  # labels follow the new shape
    with pytest.raises(ValueError, match="Unknown colour 'purple'"):
        world.intervene(index, colour="purple")
    with pytest.raises(ValueError, match="Cannot intervene on 'mood'"):
        world.intervene(index, mood=1)


def test_same_seed_same_data_and_different_seed_different_data():
    a, b, c = ConceptWorld(50, seed=1), ConceptWorld(50, seed=1), ConceptWorld(50, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # Chunked rendering does not change the result.
    assert torch.equal(ConceptWorld(50, seed=1, chunk_size=7).images, a.images)


def test_masks_partition_the_image_and_cover_each_category(world):
    masks = world.masks(torch.arange(len(world)))
    names = world.concept_names
    regions = masks[:, [names.index(r) for r in ("object", "distractor", "background", "caption")]]
    assert (regions.sum(1) == 1).all()  # every pixel has exactly one visible owner
    object_pixels = masks[:, names.index("object")] | masks[:, names.index("distractor")]
    for family in ("shape", "texture", "colour"):
        family_masks = masks[:, [i for i, n in enumerate(names) if n.startswith(family + "/")]]
        assert torch.equal(family_masks.any(1), object_pixels)
    parts = masks[:, [names.index("part/edge"), names.index("part/interior")]]
    assert torch.equal(parts.any(1), object_pixels) and not (parts.sum(1) > 1).any()
    corners = masks[:, names.index("part/corner")]
    assert not (corners & ~object_pixels).any()
    circles = (world.latent.shape == world.shapes.index("circle")) & ~world.latent.distractor
    assert not corners[circles].any() and corners[world.latent.shape == world.shapes.index("square")].any()
    categories = world.concept_categories
    assert categories["shape/circle"] == "object" and categories["colour/red"] == "colour"
    assert categories["scene/grid"] == "scene" and categories["part/edge"] == "part"


def test_labels_follow_label_by_and_the_spurious_option():
    by_texture = ConceptWorld(200, seed=0, label_by="texture")
    assert torch.equal(by_texture.labels, by_texture.latent.texture) and by_texture.num_classes == 3
    spurious = ConceptWorld(4000, seed=0, spurious_concept="colour", spurious_p=0.8)
    agreement = (spurious.latent.colour == spurious.labels % 4).float().mean()
    assert agreement == pytest.approx(0.8 + 0.2 / 4, abs=0.02)
    independent = ConceptWorld(4000, seed=0, spurious_concept="colour", spurious_p=0.0)
    assert (independent.latent.colour == independent.labels % 4).float().mean() == pytest.approx(0.25, abs=0.02)
    rule = ConceptWorld(100, seed=0, label_by=lambda lat: (lat.colour == 0).long(), num_classes=2)
    assert torch.equal(rule.labels, (rule.latent.colour == 0).long())


def test_caption_agreement():
    data = ConceptWorld(2000, seed=0, caption_p=1.0, caption_agreement=0.7)
    assert (data.latent.caption >= 0).all()
    assert (data.latent.caption == data.labels).float().mean() == pytest.approx(0.7, abs=0.03)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_by": "mood"}, "label_by must be one of"),
        ({"spurious_concept": "shape"}, "must differ"),
        ({"spurious_p": 1.5}, r"spurious_p must be a probability"),
        ({"shapes": ("blob",)}, "shapes must be a non-empty subset"),
        ({"image_size": 4}, "at least 8 pixels"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConceptWorld(10, **kwargs)


def test_other_resolutions_render_the_same_scene():
    small, large = ConceptWorld(5, seed=4, image_size=32), ConceptWorld(5, seed=4, image_size=64)
    assert large.images.shape == (5, 3, 64, 64)
    down = torch.nn.functional.avg_pool2d(large.masks(slice(None))[:, 0].float().unsqueeze(1), 2).squeeze(1)
    overlap = ((down > 0.5) & small.masks(slice(None))[:, 0]).sum() / small.masks(slice(None))[:, 0].sum()
    assert overlap > 0.85


def test_items_and_batches_follow_the_documented_convention():
    data = ConceptWorldDataModule(num_train=40, num_val=20, batch_size=8)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    as_dict = ConceptWorldDataModule(num_train=40, num_val=20, batch_size=8, batch_format="dict")
    as_dict.setup("fit")
    batch = next(iter(as_dict.val_dataloader()))
    unpacked = unpack_batch(batch)
    assert unpacked.masks.shape == (8, len(data.val_set.concept_names), 32, 32)
    assert unpacked.object_mask.shape == (8, 32, 32) and unpacked.object_mask.dtype == torch.bool
    replaced = replace_inputs(batch, torch.zeros(8, 3, 32, 32))
    assert replaced is batch and batch["image"].abs().sum() == 0
    assert replace_inputs((x, y), torch.zeros_like(x))[0].abs().sum() == 0
    with pytest.raises(TypeError, match="expected a tuple/list"):
        unpack_batch({"pixels": x})


def test_a_loader_fetches_whole_batches_equal_to_the_items_one_by_one():
    from torch.utils.data import DataLoader, Subset

    world = ConceptWorld(30, seed=4)
    picked = [7, 3, 29, 3]
    for fetched, index in zip(world.__getitems__(picked), picked):
        expected = world[index]
        assert fetched.keys() == expected.keys() and fetched["index"] == index
        for key in ("image", "masks", "object_mask"):
            assert torch.equal(fetched[key], expected[key])
    # DataLoader asks for whole batches (also through a Subset); the batch stacks the items.
    subset = Subset(world, list(range(5, 30)))
    renders = []
    render_masks = world.masks
    world.masks = lambda rows: renders.append(len(rows)) or render_masks(rows)
    batch = next(iter(DataLoader(subset, batch_size=6, shuffle=False)))
    assert renders == [6]  # one vectorised call for the batch
    del world.masks
    assert torch.equal(batch["masks"], torch.stack([world[i]["masks"] for i in range(5, 11)]))
    assert batch["index"].tolist() == list(range(5, 11))
    # Callbacks draw their probe sets the same way.
    from xai_lightning.callbacks.probe import draw_probe

    probe, available = draw_probe(world, 10, seed=3)
    assert available == 30 and probe.object_masks is not None
    assert torch.equal(probe.object_masks, torch.stack([world[int(i)]["object_mask"] for i in probe.indices]))
    assert torch.equal(probe.images, world.images[probe.indices])


def test_handwritten_digits_are_real_stratified_and_upsampled():
    train, val = HandwrittenDigits("train"), HandwrittenDigits("val")
    assert len(train) + len(val) == 1797
    assert train.images.shape[1:] == (3, 32, 32) and 0 <= train.images.min() and train.images.max() <= 1
    assert set(val.labels.tolist()) == set(range(10))
    counts = torch.bincount(val.labels, minlength=10).float()
    assert counts.min() / counts.max() > 0.85  # stratified
    module = DigitsDataModule(image_size=8, channels=1)
    module.setup("fit")
    x, y = next(iter(module.train_dataloader()))
    assert x.shape[1:] == (1, 8, 8)


def test_landmarks_sit_on_the_rendered_object():
    world = ConceptWorld(200, seed=5, shapes=("square", "triangle", "diamond", "cross"))
    landmarks = world.landmarks()
    assert landmarks.shape == (200, 5, 2)
    size = world.image_size
    objects = world.masks(torch.arange(200))[:, world.concept_index("object")]
    # Centre and every corner lie on (or within a pixel of) an object pixel.
    dilated = torch.nn.functional.max_pool2d(objects.float().unsqueeze(1), 3, 1, 1).squeeze(1).bool()
    points = landmarks.reshape(-1, 2)
    rows = torch.arange(200).repeat_interleave(5)
    valid = ~points.isnan().any(1)
    pixel = (points[valid] * size).floor().long().clamp(0, size - 1)
    assert dilated[rows[valid], pixel[:, 1], pixel[:, 0]].float().mean() > 0.98
    squares = world.latent.shape == 0
    assert not landmarks[squares].isnan().any()
    assert landmarks[world.latent.shape == 1][:, 4].isnan().all()  # triangles: 3 corners

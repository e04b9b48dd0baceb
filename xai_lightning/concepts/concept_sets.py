"""Where concept examples come from: ConceptWorld concept specs, image folders, or tensors; and
random counter-sets drawn from a pool of images (the validation data by default).

tcav users keep one folder of images per concept (``concepts/striped/*.jpg``); ConceptWorld
users name a concept (``"striped"``, ``"red"``, ``"circle"``, ``"texture/dotted"``, ``"caption"``)
and get images whose *labelled object* carries it, known from the generator's latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "concept_contrast_from_world",
    "concept_contrast_latents",
    "concept_examples_from_world",
    "draw_random_sets",
    "load_concept_folder",
    "resolve_world_concept",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# ConceptWorld concept families that are image-level facts of the labelled object or the scene.
_LATENT_FIELDS = {"shape": "shape", "texture": "texture", "colour": "colour", "scene": "background"}


def resolve_world_concept(world: Any, spec: str) -> str:
    """The full ConceptWorld concept name for ``spec``: ``"striped"`` → ``"texture/striped"``.

    Raises ``KeyError`` listing the known names for an unknown or ambiguous spec.
    """
    names = tuple(world.concept_names)
    usable = [name for name in names if name.split("/")[0] in _LATENT_FIELDS] + ["caption", "distractor"]
    if spec in usable:
        return spec
    matches = [name for name in usable if name.split("/")[-1] == spec]
    if len(matches) == 1:
        return matches[0]
    reason = f"ambiguous (matches {matches})" if matches else "unknown"
    raise KeyError(
        f"Concept {spec!r} is {reason}. ConceptWorld concepts usable for TCAV are: {', '.join(usable)} "
        "(the part after '/' is enough when unique)."
    )


def _has_concept(world: Any, name: str) -> torch.Tensor:
    latent = world.latent
    if name == "caption":
        return latent.caption >= 0
    if name == "distractor":
        return latent.distractor.clone()
    family, value = name.split("/", 1)
    vocabulary = {
        "shape": world.shapes,
        "texture": world.textures,
        "colour": tuple(world.colours),
        "scene": world.backgrounds,
    }[family]
    return getattr(latent, _LATENT_FIELDS[family]) == vocabulary.index(value)


def concept_examples_from_world(world: Any, spec: str, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` images ``(count, 3, H, W)`` of ``world`` whose labelled object has concept ``spec``.

    Drawn without replacement with a seeded generator. ``"caption"``/``"distractor"`` select
    images that carry a caption glyph / a distractor object.
    """
    name = resolve_world_concept(world, spec)
    candidates = torch.nonzero(_has_concept(world, name)).flatten()
    if candidates.numel() < count:
        raise ValueError(
            f"ConceptWorld has only {candidates.numel()} images with concept {name!r} but {count} are needed; "
            f"generate more samples (num_samples={len(world)}) or lower examples_per_concept."
        )
    order = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))[:count]
    return world.images[candidates[order].sort().values].clone()


def concept_contrast_latents(world: Any, a: str, b: str, count: int, seed: int = 0) -> tuple[Any, Any]:
    """The latents behind :func:`concept_contrast_from_world`: ``(latent_a, latent_b)``, ``count`` each.

    Set A has concept ``a`` and not ``b``; set B has ``b`` and not ``a``: ``count`` seeded draws of the
    world's latents, intervened on the two concepts' families (``b``'s family gets a value other than
    ``b``, drawn uniformly). Both concepts must be of different intervenable families (shape,
    texture, colour).
    """
    name_a, name_b = resolve_world_concept(world, a), resolve_world_concept(world, b)
    family_a, family_b = name_a.split("/")[0], name_b.split("/")[0]
    intervenable = {"shape", "texture", "colour"}
    if family_a == family_b or not {family_a, family_b} <= intervenable:
        raise ValueError(
            f"Contrast sets intervene on two different families of {sorted(intervenable)}; got "
            f"{name_a!r} and {name_b!r}."
        )
    vocabulary = {"shape": world.shapes, "texture": world.textures, "colour": tuple(world.colours)}
    generator = torch.Generator().manual_seed(seed)

    def intervened(keep: str, avoid: str) -> Any:
        keep_family, keep_value = keep.split("/", 1)
        avoid_family, avoid_value = avoid.split("/", 1)
        rows = torch.randint(0, len(world), (count,), generator=generator)
        others = [i for i, v in enumerate(vocabulary[avoid_family]) if v != avoid_value]
        replacement = torch.as_tensor(others)[torch.randint(0, len(others), (count,), generator=generator)]
        changes = {
            _LATENT_FIELDS[keep_family]: vocabulary[keep_family].index(keep_value),
            _LATENT_FIELDS[avoid_family]: replacement,
        }
        return world.latent[rows].replace(**changes)

    return intervened(name_a, name_b), intervened(name_b, name_a)


def concept_contrast_from_world(
    world: Any, a: str, b: str, count: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept sets for a relative CAV ``a`` vs ``b`` that differ in those two concepts only.

    When ``a`` and ``b`` belong to different families (a shape and a colour, say ``circle`` vs
    ``red``), a set drawn from the data would confound them wherever the data correlates them (a
    spurious colour): most circles would be red. Instead both sets are *rendered* from the latents
    of :func:`concept_contrast_latents`: set A has ``a`` and not ``b`` (circles of any other colour),
    set B has ``b`` and not ``a`` (red objects of any other shape); everything else (position, size,
    texture, background) follows the data. Concepts of one family exclude each other already; each
    set is then drawn as :func:`concept_examples_from_world` does.

    Returns ``(images_a (count, 3, H, W), images_b (count, 3, H, W))``.
    """
    name_a, name_b = resolve_world_concept(world, a), resolve_world_concept(world, b)
    if name_a == name_b:
        raise ValueError(f"A relative CAV needs two different concepts; got {a!r} and {b!r} (both {name_a!r}).")
    families = {name_a.split("/")[0], name_b.split("/")[0]}
    if len(families) == 1 or not families <= {"shape", "texture", "colour"}:
        return (
            concept_examples_from_world(world, name_a, count, seed),
            concept_examples_from_world(world, name_b, count, seed + 1),
        )
    latent_a, latent_b = concept_contrast_latents(world, name_a, name_b, count, seed)
    return world.render(latent_a).images, world.render(latent_b).images


def load_concept_folder(
    path: str | Path, image_size: int | Sequence[int] | None = None, channels: int = 3
) -> torch.Tensor:
    """Load every image file of a concept folder (sorted by name) as ``(N, channels, H, W)`` in [0, 1].

    Args:
        path: a directory with image files (``.png``, ``.jpg``, …; sub-folders are ignored).
        image_size: resize to this side (or ``(H, W)``) with bilinear filtering; None keeps the
            files' size (they must all agree).
        channels: 3 (RGB) or 1 (grey).

    Raises:
        FileNotFoundError: the folder does not exist (the message names it).
        ValueError: the folder has no image files, or sizes differ and no ``image_size`` was given.
    """
    from PIL import Image

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Concept folder {str(folder)!r} does not exist (or is not a directory); create it with one image "
            "file per concept example, or fix the path."
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"Concept folder {str(folder)!r} has no image files ({', '.join(IMAGE_SUFFIXES)}); put the concept's "
            "example images in it."
        )
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    size = None
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    tensors = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            tensors.append(array.view(image.size[1], image.size[0], channels).permute(2, 0, 1).float() / 255.0)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"Images in {str(folder)!r} have different sizes {sorted(shapes)}; pass image_size=.")
    return torch.stack(tensors)


def draw_random_sets(pool: torch.Tensor, num_sets: int, count: int, seed: int = 0) -> torch.Tensor:
    """``(num_sets, count)`` row indices into ``pool``: each set drawn without replacement, seeded per set.

    Set ``r`` depends only on ``(seed, r)``, so adding random sets keeps the earlier ones.
    """
    size = pool.shape[0] if isinstance(pool, torch.Tensor) else int(pool)
    if size < count:
        raise ValueError(
            f"The random pool has {size} images but each random set needs {count}; give a larger pool "
            "(more validation data) or lower examples_per_concept."
        )
    return (
        torch.stack(
            [
                torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + r))[:count].sort().values
                for r in range(num_sets)
            ]
        )
        if num_sets
        else torch.zeros(0, count, dtype=torch.long)
    )

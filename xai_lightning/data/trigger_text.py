"""TriggerText: synthetic sentences whose class is decided by known trigger words — token-level ground truth.

In the spirit of ConceptWorld: every sentence is drawn from a seeded latent description, so it is
known which tokens carry the label. Each class owns a few *trigger* words; a sentence of class
``c`` holds 1…``max_triggers`` triggers of class ``c`` (and none of another class) at random
positions among *distractor* words that carry no information. A token-level explanation of a
model that learned the task should put its mass on the trigger tokens (``trigger_mask``);
chance is the fraction of tokens that are triggers.

Optionally a *spurious* word correlates with the class without deciding it: with probability
``spurious_p`` its presence agrees with the class (present iff the class is ``spurious_class``),
otherwise it is present with probability 1/2 — a shortcut a model may learn, which the
explanation should then reveal (``spurious_mask``).

Vocabulary ids: ``0`` padding, ``1`` the mask token ``[MASK]``, then distractors, triggers of
each class, and the spurious word. Sentences are padded with ``pad_id`` at the end to
``max_length``.

Items are dicts: ``inputs (T,)`` long token ids, ``label``, ``trigger_mask (T,)`` bool,
``spurious_mask (T,)`` bool, ``length``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DISTRACTOR_WORDS", "TRIGGER_WORDS", "TriggerText"]

DISTRACTOR_WORDS: tuple[str, ...] = (
    "the",
    "a",
    "film",
    "story",
    "actor",
    "scene",
    "plot",
    "music",
    "camera",
    "city",
    "night",
    "day",
    "house",
    "river",
    "road",
    "dog",
    "cat",
    "table",
    "window",
    "book",
    "letter",
    "train",
    "station",
    "garden",
    "tree",
    "morning",
    "evening",
    "friend",
    "family",
    "street",
    "chair",
    "door",
    "paper",
    "voice",
    "room",
    "light",
    "water",
    "stone",
    "bridge",
    "market",
    "school",
    "winter",
    "summer",
    "island",
    "boat",
    "field",
    "hill",
    "village",
    "kitchen",
    "office",
    "painting",
    "song",
    "dinner",
    "journey",
    "mirror",
    "clock",
    "garden_path",
    "coat",
    "shadow",
    "corner",
)
#: Trigger words of each class, in class order (class 0 "negative", class 1 "positive", ...).
TRIGGER_WORDS: tuple[tuple[str, ...], ...] = (
    ("awful", "boring", "dreadful", "terrible"),
    ("brilliant", "delightful", "superb", "wonderful"),
    ("baffling", "odd", "puzzling", "strange"),
    ("calm", "gentle", "quiet", "serene"),
)
CLASS_NAMES: tuple[str, ...] = ("negative", "positive", "strange", "calm")
PAD, MASK = "<pad>", "[MASK]"


class TriggerText(torch.utils.data.Dataset):
    """Seeded synthetic sentences with trigger-word ground truth.

    Args:
        num_samples: sentences.
        seed: everything is a pure function of it.
        num_classes: 2 to 4 (each class has its own trigger words).
        min_length, max_length: sentence length range (tokens), padded to ``max_length``.
        max_triggers: triggers per sentence are drawn uniformly from 1…``max_triggers``.
        num_distractors: distractor vocabulary size (≤ 60).
        spurious_p: strength of the spurious word's correlation with ``spurious_class`` (0: none,
            the word is still present in half the sentences only when ``spurious_word`` is set).
        spurious_class: the class the spurious word goes with.
        spurious_word: the spurious word (None: no spurious word at all).

    Attributes:
        ids ``(N, T)`` long, labels ``(N,)``, lengths ``(N,)``, trigger_mask and spurious_mask
        ``(N, T)`` bool, vocabulary (list of words, index = id), class_names, pad_id, mask_id.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        seed: int = 0,
        num_classes: int = 2,
        min_length: int = 8,
        max_length: int = 24,
        max_triggers: int = 2,
        num_distractors: int = 40,
        spurious_p: float = 0.0,
        spurious_class: int = 1,
        spurious_word: str | None = None,
    ) -> None:
        if not 2 <= num_classes <= len(TRIGGER_WORDS):
            raise ValueError(f"num_classes must be in 2..{len(TRIGGER_WORDS)}; got {num_classes}")
        if not 1 <= min_length <= max_length:
            raise ValueError(f"Need 1 <= min_length <= max_length; got {min_length}, {max_length}")
        if not 1 <= max_triggers <= min_length - (spurious_word is not None):
            raise ValueError(
                f"max_triggers must be in 1..min_length (with room for the spurious word); got {max_triggers}"
            )
        if not 1 <= num_distractors <= len(DISTRACTOR_WORDS):
            raise ValueError(f"num_distractors must be in 1..{len(DISTRACTOR_WORDS)}; got {num_distractors}")
        if not 0.0 <= spurious_p <= 1.0:
            raise ValueError(f"spurious_p must be in [0, 1]; got {spurious_p}")
        if not 0 <= spurious_class < num_classes:
            raise ValueError(f"spurious_class must be in 0..{num_classes - 1}; got {spurious_class}")
        self.num_samples = num_samples
        self.seed = seed
        self.num_classes = num_classes
        self.max_length = max_length
        self.class_names = CLASS_NAMES[:num_classes]
        self.trigger_words = TRIGGER_WORDS[:num_classes]
        self.vocabulary: list[str] = [PAD, MASK, *DISTRACTOR_WORDS[:num_distractors]]
        first_trigger = len(self.vocabulary)
        for words in self.trigger_words:
            self.vocabulary.extend(words)
        self.spurious_word = spurious_word
        if spurious_word is not None:
            if spurious_word in self.vocabulary:
                raise ValueError(f"spurious_word {spurious_word!r} is already in the vocabulary")
            self.vocabulary.append(spurious_word)
        self.pad_id, self.mask_id = 0, 1
        per_class = len(self.trigger_words[0])
        #: ``(num_classes, per_class)`` ids of each class's trigger words.
        self.trigger_ids = torch.arange(first_trigger, first_trigger + num_classes * per_class).view(num_classes, -1)
        self.spurious_id = len(self.vocabulary) - 1 if spurious_word is not None else None
        self._generate(min_length, max_length, max_triggers, num_distractors, spurious_p, spurious_class)

    def _generate(
        self,
        min_length: int,
        max_length: int,
        max_triggers: int,
        num_distractors: int,
        spurious_p: float,
        spurious_class: int,
    ) -> None:
        g = torch.Generator().manual_seed(self.seed)
        n = self.num_samples
        labels = torch.randint(0, self.num_classes, (n,), generator=g)
        lengths = torch.randint(min_length, max_length + 1, (n,), generator=g)
        positions = torch.arange(max_length).view(1, -1)
        real = positions < lengths.view(-1, 1)
        ids = 2 + torch.randint(0, num_distractors, (n, max_length), generator=g)
        # Positions in random order per sentence (padding last): the first k are the triggers.
        order = torch.rand(n, max_length, generator=g).masked_fill(~real, 2.0).argsort(1)
        rank = order.argsort(1)
        triggers = torch.randint(1, max_triggers + 1, (n,), generator=g)
        trigger_mask = rank < triggers.view(-1, 1)
        choice = torch.randint(0, self.trigger_ids.shape[1], (n, max_length), generator=g)
        ids = torch.where(trigger_mask, self.trigger_ids[labels.view(-1, 1), choice], ids)
        spurious_mask = torch.zeros_like(trigger_mask)
        if self.spurious_id is not None:
            agree = torch.rand(n, generator=g) < spurious_p
            coin = torch.rand(n, generator=g) < 0.5
            present = torch.where(agree, labels == spurious_class, coin)
            spurious_mask = (rank == triggers.view(-1, 1)) & present.view(-1, 1)  # the next free random position
            ids = torch.where(spurious_mask, torch.tensor(self.spurious_id), ids)
        self.ids = torch.where(real, ids, torch.tensor(self.pad_id))
        self.labels = labels
        self.lengths = lengths
        self.trigger_mask = trigger_mask & real
        self.spurious_mask = spurious_mask & real

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {
            "inputs": self.ids[index],
            "label": int(self.labels[index]),
            "trigger_mask": self.trigger_mask[index],
            "spurious_mask": self.spurious_mask[index],
            "length": int(self.lengths[index]),
        }

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (N, T), labels (N,))`` for a ``TensorDataset``."""
        return self.ids, self.labels

    def decode(self, ids: torch.Tensor | Sequence[int], skip_padding: bool = True) -> list[str]:
        """Words of one sentence's ids."""
        words = [self.vocabulary[int(i)] for i in torch.as_tensor(ids).reshape(-1).tolist()]
        return [w for w in words if w != PAD] if skip_padding else words

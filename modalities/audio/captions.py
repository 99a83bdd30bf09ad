"""Text queries for language-queried separation: caption templates per sound class.

Each class has several phrasings. They are split, fixed in this file, into **training
phrasings** and **held-out phrasings**: the held-out ones never appear in a training batch and
are used only to query validation/test mixtures, so evaluation measures whether the model
follows the meaning of a query rather than memorising a handful of strings.

The empty string ``""`` is the null (unconditional) query used for classifier-free guidance;
it is never a template.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "CAPTION_TEMPLATES",
    "HELD_OUT_TEMPLATES",
    "NULL_CAPTION",
    "captions_for",
    "draw_caption",
    "draw_captions",
]

NULL_CAPTION = ""

CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "speech": (
        "a woman speaking", "someone talking", "a female voice reading a message",
        "a person speaking clearly", "a recorded voice prompt", "speech",
    ),
    "piano": (
        "piano music", "a piano playing a melody", "someone playing the piano",
        "keys of a piano being played", "a piano", "piano chords",
    ),
    "strings": (
        "string instruments playing", "a violin melody", "a string section",
        "bowed strings", "a cello playing", "strings music",
    ),
    "brass": (
        "brass instruments playing", "a trumpet melody", "a horn playing",
        "a brass section", "a trombone playing", "brass music",
    ),
    "woodwind": (
        "a woodwind instrument playing", "a flute melody", "a clarinet playing",
        "an oboe playing a tune", "woodwinds", "a reed instrument playing",
    ),
    "guitar": (
        "a guitar playing", "someone strumming a guitar", "guitar music",
        "a plucked guitar melody", "an acoustic guitar", "a guitar",
    ),
    "bass": (
        "a bass line", "a bass guitar playing", "low bass notes",
        "a deep bass melody", "an electric bass", "bass",
    ),
    "drums": (
        "drums playing", "a drum beat", "someone playing a drum kit",
        "percussion and cymbals", "a rhythm on drums", "drums",
    ),
    "typing": (
        "typing on a keyboard", "keys being pressed", "someone typing",
        "a mechanical keyboard clicking", "keyboard clicks", "typing",
    ),
    "desktop": (
        "a computer notification sound", "an alert chime", "a system beep",
        "an electronic bell", "a notification", "a desktop sound effect",
    ),
}  # fmt: skip

#: Phrasings kept out of training: the 3rd and 6th template of every class (fixed by index).
HELD_OUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    name: tuple(t for i, t in enumerate(templates) if i % 3 == 2)
    for name, templates in CAPTION_TEMPLATES.items()
}


def captions_for(class_name: str, split: str, held_out: bool = True) -> tuple[str, ...]:
    """The phrasings that may query ``class_name`` in ``split``.

    ``"train"`` gets the training phrasings. ``"val"``/``"test"``/``"predict"`` get the held-out
    phrasings when ``held_out`` is ``True``, else the training phrasings (to separate the
    effect of unseen wording from unseen audio).
    """
    if class_name not in CAPTION_TEMPLATES:
        raise ValueError(
            f"no caption templates for class {class_name!r}; known: {sorted(CAPTION_TEMPLATES)}"
        )
    if split not in ("train", "val", "test", "predict"):
        raise ValueError(f"split must be train, val, test or predict, got {split!r}")
    held = HELD_OUT_TEMPLATES[class_name]
    if split != "train" and held_out:
        return held
    return tuple(t for t in CAPTION_TEMPLATES[class_name] if t not in held)


def draw_caption(
    class_name: str, split: str, generator: torch.Generator, held_out: bool = True
) -> str:
    """One phrasing for ``class_name``, drawn uniformly with ``generator``."""
    choices = captions_for(class_name, split, held_out)
    return choices[int(torch.randint(len(choices), (), generator=generator))]


def draw_captions(
    class_indices: Tensor,
    class_names: tuple[str, ...],
    split: str,
    generator: torch.Generator,
    held_out: bool = True,
) -> list[str]:
    """A phrasing per element of ``class_indices`` (long ``[B]``), drawn uniformly.

    The draw is one tensor op over the batch (a uniform number scaled by each class's phrasing
    count); only the final lookup of the strings is a list comprehension.
    """
    tables = [captions_for(name, split, held_out) for name in class_names]
    counts = torch.tensor([len(table) for table in tables])[class_indices]
    picks = (torch.rand(class_indices.shape, generator=generator) * counts).long()
    return [tables[c][p] for c, p in zip(class_indices.tolist(), picks.tolist())]

"""Masking strategies: the setting ``data.masking``, and where words start for whole-word masking.

A masking strategy is a setting of its own (``data.masking``): a :class:`MaskingStrategy` holds its settings and
builds the collator (:mod:`mlm_lightning.data.collator`) from what the data module knows (the tokenizer, the seed,
training or evaluation). A new strategy is a new subclass here, chosen with ``data.masking.class_path``;
:class:`TokenMasking` is the default.
"""

from __future__ import annotations

import json
import re
import unicodedata
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

# The collator's names are importable from here too (``mlm_lightning.data.masking.MLMCollator``, as before the split).
from mlm_lightning.data.collator import IGNORE_INDEX, NO_CLASS, MLMBatch, MLMCollator, example_seed
from mlm_lightning.data.tokenizer import tokenizer_family
from mlm_lightning.errors import MLMError
from mlm_lightning.families import WORD_MARKERS
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeInt, NonZeroProbability

__all__ = [
    "IGNORE_INDEX",
    "NO_CLASS",
    "WORD_MARKERS",
    "MLMBatch",
    "MLMCollator",
    "MaskingStrategy",
    "TokenMasking",
    "example_seed",
    "word_pieces",
]


class MaskingStrategy(ABC):
    """How tokens are chosen and replaced for MLM: the setting ``data.masking``.

    A subclass holds only its own settings (typed ``__init__`` arguments, which become ``data.masking.*``) and
    builds the collator the data module uses for training and for evaluation.
    """

    @abstractmethod
    def collator(self, tokenizer: Any, seed: int, train: bool) -> MLMCollator:
        """The collator for ``tokenizer``'s ids.

        Args:
            tokenizer: The data module's fast tokenizer (pad, mask and special ids, vocabulary size).
            seed: The data module's seed; every example's mask is fixed by it, the epoch and the example.
            train: Training (masks re-drawn each epoch) or evaluation (fixed masks, from another seed stream).
        """


class TokenMasking(MaskingStrategy):
    """BERT's masking: choose a share of the tokens (or of whole words), replace most with ``[MASK]``.

    Args:
        mlm_probability: Share of tokens (or words, with ``whole_word_mask``) chosen for prediction; 1 chooses every
            one that is not a special token (still replaced 80/10/10).
        mask_replace_prob: Share of chosen tokens replaced by ``[MASK]``.
        random_replace_prob: Share of chosen tokens replaced by a random token (the rest stay as they are).
        whole_word_mask: Choose whole words rather than single tokens (every tokenizer kind: WordPiece,
            byte-level BPE, SentencePiece; see :func:`word_pieces`).
        start_probability: A masking-rate schedule: training starts masking at this rate, which moves linearly to
            ``mlm_probability`` over the first ``schedule_steps`` training batches (per device; optimizer steps
            without gradient accumulation) and stays there (ModernBERT and mmBERT start high: 30 % -> 15 %).
            The rate is a function of the batch number alone, so a resumed run masks as an uninterrupted one.
            Validation always masks at ``mlm_probability``. ``None``: no schedule.
        schedule_steps: Length of the schedule in training batches (required with ``start_probability``).
    """

    def __init__(
        self,
        mlm_probability: NonZeroProbability = 0.15,
        mask_replace_prob: ClosedUnitInterval = 0.8,
        random_replace_prob: ClosedUnitInterval = 0.1,
        whole_word_mask: bool = False,
        start_probability: NonZeroProbability | None = None,
        schedule_steps: NonNegativeInt = 0,
    ) -> None:
        # The ranges are checked by their types while the command line parses; the sum only here.
        if mask_replace_prob + random_replace_prob > 1.0:
            raise MLMError(
                f"data.masking.mask_replace_prob + data.masking.random_replace_prob must be at most 1 (the rest of "
                f"the chosen tokens stay as they are), got {mask_replace_prob} + {random_replace_prob}"
            )
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_mask = whole_word_mask
        if start_probability is not None and not schedule_steps:
            raise MLMError(
                "data.masking.start_probability needs data.masking.schedule_steps (the batches over which the rate "
                "moves to data.masking.mlm_probability)"
            )
        self.start_probability = start_probability
        self.schedule_steps = schedule_steps

    def collator(self, tokenizer: Any, seed: int, train: bool) -> MLMCollator:
        """The collator; evaluation uses a different, fixed seed stream (see :meth:`MaskingStrategy.collator`)."""
        continuation, classes = word_pieces(tokenizer) if self.whole_word_mask else (None, None)
        return MLMCollator(
            pad_token_id=tokenizer.pad_token_id,
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_token_ids=tokenizer.all_special_ids,
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            seed=seed if train else seed + 7919,
            continuation_mask=continuation,
            piece_classes=classes,
            redraw_each_epoch=train,
            start_probability=self.start_probability,
            schedule_batches=self.schedule_steps,
        )


# -- where words start --------------------------------------------------------------------------------------------
# Each tokenizer kind's word marker: mlm_lightning.families.WORD_MARKERS. Byte-level BPE's pre-tokenizer (GPT-2's
# pattern) also splits letters, digits and other characters apart ("king" "," and "don" "'t" are two words each), so
# its pieces' character classes count too.


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet back to bytes (GPT-2's ``bytes_to_unicode``, inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def _char_class(char: str) -> int:
    """GPT-2's pre-tokenizer classes: letter, number, white space, anything else."""
    category = unicodedata.category(char)
    return 0 if category[0] == "L" else 1 if category[0] == "N" else 2 if char.isspace() else 3


def _edge_classes(raw: bytes) -> tuple[int, int]:
    """Classes of the first and last whole UTF-8 character of a byte-level piece (NO_CLASS: cut inside one)."""

    def whole(chunk: bytes) -> int:
        try:
            return _char_class(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            return NO_CLASS

    def width(lead: int) -> int:
        return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4

    if not raw:
        return NO_CLASS, NO_CLASS
    first = (
        NO_CLASS if 0x80 <= raw[0] < 0xC0 else whole(raw[: width(raw[0])]) if width(raw[0]) <= len(raw) else NO_CLASS
    )
    lead = max((i for i, b in enumerate(raw) if not 0x80 <= b < 0xC0), default=None)
    last = NO_CLASS if lead is None or lead + width(raw[lead]) != len(raw) else whole(raw[lead:])
    # A single space before a word belongs to it (GPT-2's " ?\p{L}+"): a piece ending in one ("Ġ" alone) is
    # continued by the next piece, whatever that starts with.
    return first, NO_CLASS if raw.endswith(b" ") else last


def word_pieces(tokenizer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Where whole words start, per token id: the collator's ``continuation_mask`` and ``piece_classes``.

    One rule for every tokenizer kind (:data:`WORD_MARKERS`): a piece continues the word before it unless its
    marker says otherwise (WordPiece ``##`` continues; byte-level BPE ``Ġ`` and SentencePiece ``▁`` start), an
    added (non-special) token is a word of its own, and for byte-level BPE a change of character class between
    two pieces is a new word (a run of white space is one word; a single space belongs to the word after it).
    That gives the fast tokenizer's ``word_ids()`` from the ids alone (byte-level BPE: except at apostrophes,
    ``'s`` ``'t``...), so rows cut from the cached token stream anywhere (packed blocks) still know their words
    and the cache needs nothing more (tests check it per kind).
    Raises :class:`MLMError` for a tokenizer of another kind.
    """
    kind = tokenizer_family(tokenizer)
    if kind not in WORD_MARKERS:
        raise MLMError(
            f"data.masking.whole_word_mask: cannot tell where words start in a {kind} tokenizer "
            f"(it supports {', '.join(WORD_MARKERS)})"
        )
    marker, marker_starts = WORD_MARKERS[kind]
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if kind == "WordPiece":
        marker = backend["model"].get("continuing_subword_prefix") or marker
    elif kind == "SentencePiece":
        found = re.search(r'"replacement": "(.)"', json.dumps(backend.get("pre_tokenizer"), ensure_ascii=False))
        marker = found.group(1) if found else marker
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    continuation = np.zeros(size, dtype=bool)
    byte_level = kind == "byte-level BPE"
    classes = np.full((size, 2), NO_CLASS, dtype=np.int8) if byte_level else None
    added = {int(i) for i in tokenizer.added_tokens_decoder}
    decoder = _byte_decoder() if byte_level else {}
    for piece, i in tokenizer.get_vocab().items():
        if i in added:  # a whole word (or a special token, which is never eligible anyway)
            if classes is not None:
                classes[i] = 4  # a class of its own: the piece after it starts a word
            continue
        continuation[i] = piece.startswith(marker) != marker_starts
        if classes is not None and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)
            classes[i] = _edge_classes(raw)
            # White space only ("Ġ", "ĠĠ", "Ċ"): a run of it is one word, so whether it starts one is up to
            # the classes (after a letter yes, after other white space no).
            continuation[i] |= raw.isspace()
    return continuation, classes

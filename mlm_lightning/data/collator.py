"""The MLM collator: pads a batch of rows and masks them (80/10/10, single tokens or whole words).

Written by hand rather than using ``transformers.DataCollatorForLanguageModeling`` because that collator
draws from the global RNG: its masks cannot be fixed per example for validation, cannot be replayed
exactly after a resume, and change when the number of dataloader workers changes. Here every example's
mask comes from its own generator seeded by ``(seed, epoch, example index)``, so

* validation masks are identical in every epoch, every run and every batch size: an evaluation collator
  (``redraw_each_epoch=False``) ignores the epoch it is handed, whatever the sampler or Lightning passes;
* training masks are re-drawn each epoch, yet reproducible and independent of worker count;
* the masked positions are computed on the CPU in the workers, so the training step needs no
  host-device synchronisation to find them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict, cast

import numpy as np
import torch
from typing_extensions import NotRequired

from mlm_lightning.data.sequence_warmup import SequenceWarmup, warmup_length
from mlm_lightning.errors import MLMError

IGNORE_INDEX = -100
NO_CLASS = -1  # a piece that starts or ends inside a character (byte-level BPE): never a word boundary by class
_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, epoch, index) over the seed space


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one example's mask (splitmix64 of the three numbers)."""
    z = (seed * 1_000_003 + epoch) * 0x100000001B3 + index
    z = (z + _MIX) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class MLMBatch(TypedDict):
    """One batch as the collator hands it to the module (``B`` rows of ``T`` tokens, ``M`` masked positions).

    Keys:
        input_ids: ``[B, T]`` int64 token ids after masking (``[MASK]``, random or kept), padded with ``[PAD]``.
        attention_mask: ``[B, T]`` int64, 1 for real tokens and 0 for padding; present only when some row is
            padded (without it, attention takes its fast SDPA path).
        labels: ``[B, T]`` int64 original ids at the positions chosen for prediction, ``-100`` elsewhere.
        masked_positions: ``[M]`` int64 indices into the flattened ``[B * T]`` batch of the chosen positions, in
            row-major order (computed in the workers, so the step needs no host-device synchronisation).
        masked_labels: ``[M]`` int64 the original ids at ``masked_positions`` (``labels`` gathered there).
        num_tokens: Real (non-pad) tokens in the batch, for throughput.
        num_token_pairs: Sum over rows of length squared: attention's query-key pairs, for FLOPs and MFU.
        masked_words: With whole-word masking only: the words chosen (all their pieces are masked positions), for
            per-word figures.
    """

    input_ids: torch.Tensor
    attention_mask: NotRequired[torch.Tensor]
    labels: torch.Tensor
    masked_positions: torch.Tensor
    masked_labels: torch.Tensor
    num_tokens: int
    num_token_pairs: int
    masked_words: NotRequired[int]


@dataclass
class MLMCollator:
    """Pads a list of examples and masks them for MLM.

    Each example is a dict with ``input_ids`` (1-D int array, special tokens already in place),
    ``index`` (its position in the dataset) and ``epoch``. It trusts its caller: the rates are those of a
    :class:`~mlm_lightning.data.masking.MaskingStrategy`, checked where they are set (``data.masking.*``'s types).

    Args:
        pad_token_id: Id used to pad rows up to the longest row of the batch.
        mask_token_id: Id of the ``[MASK]`` token.
        vocab_size: Random replacements are drawn from ``[0, vocab_size)`` minus special tokens.
        special_token_ids: Ids that are never masked (``[CLS]``, ``[SEP]``, ``[PAD]``, ...).
        mlm_probability: Share of eligible tokens (or words) selected for prediction.
        mask_replace_prob: Share of selected tokens replaced by ``[MASK]``.
        random_replace_prob: Share of selected tokens replaced by a random token; the rest stay unchanged.
        seed: Base seed; with ``epoch`` and ``index`` it fixes every example's mask.
        continuation_mask: For whole-word masking: a boolean array over the vocabulary, True for tokens
            that continue a word (WordPiece ``##`` pieces, byte-level BPE pieces without ``Ġ``, SentencePiece
            pieces without ``▁``). ``None`` masks single tokens. See :func:`mlm_lightning.data.masking.word_pieces`.
        piece_classes: For whole-word masking: ``[vocab, 2]`` the character class of each token's first and last
            character; a continuation piece still starts a word where its first class differs from the previous
            token's last (where the pre-tokenizer splits letters from digits and punctuation, as byte-level BPE's
            does); :data:`NO_CLASS` never does. ``None``: pieces' characters do not split words.
        pad_to_multiple_of: Round the padded length up to this multiple (1 = pad to the longest row).
        redraw_each_epoch: Draw new masks every epoch (training). ``False`` (validation, test) makes every mask
            a function of ``(seed, example)`` only: the epoch an example arrives with is ignored.
        start_probability: A masking-rate schedule (training only): the rate of an example of training batch
            ``b`` (its ``batch``, counted by :class:`~mlm_lightning.data.MLMSampler`) goes linearly from this to
            ``mlm_probability`` over the first ``schedule_batches`` batches, then stays. ``None``: no schedule.
        schedule_batches: Length of the schedule in batches.
        warmup_start: Sequence-length warm-up (training only; :mod:`mlm_lightning.data.sequence_warmup`): each
            masked row of training batch ``b`` is cut into pieces of a length growing from this to ``warmup_full``
            over ``warmup_batches`` batches. ``None``: rows stay whole.
        warmup_batches: Length of the warm-up in batches.
        warmup_full: The full row length (``data.max_seq_length``).
    """

    pad_token_id: int
    mask_token_id: int
    vocab_size: int
    special_token_ids: Sequence[int]
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    seed: int = 0
    continuation_mask: np.ndarray | None = None
    piece_classes: np.ndarray | None = None
    pad_to_multiple_of: int = 1
    redraw_each_epoch: bool = True
    start_probability: float | None = None
    schedule_batches: int = 0
    warmup_start: int | None = None
    warmup_batches: int = 0
    warmup_full: int = 0

    def rate(self, batch: int | None) -> float:
        """The share of tokens (or words) chosen in an example of training batch ``batch``: a function of it alone."""
        if self.start_probability is None or batch is None or not self.redraw_each_epoch:
            return self.mlm_probability
        done = min(1.0, batch / max(1, self.schedule_batches))
        return self.start_probability + (self.mlm_probability - self.start_probability) * done

    def __post_init__(self) -> None:
        # The rates are not checked again here: the strategy that builds the collator checked them (its types).
        special = np.zeros(max(self.vocab_size, max(self.special_token_ids, default=0) + 1), dtype=bool)
        special[list(self.special_token_ids)] = True
        special[self.pad_token_id] = True
        self._special = special
        # Random replacements never produce special tokens: a random [SEP] or [PAD] would teach nonsense.
        self._replacement_ids = torch.from_numpy(np.flatnonzero(~special[: self.vocab_size]))

    def mask_example(
        self, input_ids: np.ndarray, epoch: int, index: int, batch: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks one example (of training batch ``batch``); returns ``(masked_input_ids, labels)``, -100 elsewhere."""
        if not self.redraw_each_epoch:
            # Here, not in the sampler: Lightning calls set_epoch on evaluation samplers too, and a metric
            # compared across epochs (or reproduced by `validate` on a checkpoint) needs the same masks.
            epoch = 0
        gen = torch.Generator().manual_seed(example_seed(self.seed, epoch, index))
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
        eligible = ~torch.from_numpy(self._special[ids.numpy()])
        rate = self.rate(batch)
        if self.continuation_mask is None:
            selected = (torch.rand(ids.shape, generator=gen) < rate) & eligible
        else:
            selected = self._select_whole_words(ids, eligible, gen, rate)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[selected] = ids[selected]
        # One uniform draw per token decides [MASK] / random / keep, so the shares are exact in expectation.
        u = torch.rand(ids.shape, generator=gen)
        to_mask = selected & (u < self.mask_replace_prob)
        to_random = selected & (u >= self.mask_replace_prob) & (u < self.mask_replace_prob + self.random_replace_prob)
        out = ids.clone()
        out[to_mask] = self.mask_token_id
        n_random = int(to_random.sum())
        if n_random:
            pick = torch.randint(len(self._replacement_ids), (n_random,), generator=gen)
            out[to_random] = self._replacement_ids[pick]
        return out.numpy(), labels.numpy()

    def _word_starts(self, ids: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        # A word starts at every eligible token that is not a continuation piece, and at every eligible token
        # right after a special token or the row's start: a word never spans [SEP] (a "##" piece after it belongs
        # to the next document), and a word cut by a block's start is still a word of its own.
        assert self.continuation_mask is not None  # whole-word masking only
        cont = torch.from_numpy(self.continuation_mask[ids.numpy()])
        after_special = torch.ones_like(eligible)
        after_special[1:] = ~eligible[:-1]
        starts = eligible & (~cont | after_special)
        if self.piece_classes is not None:  # e.g. "king" "," or "don" "'t": a new pre-token, so a new word
            classes = torch.from_numpy(self.piece_classes[ids.numpy()].astype(np.int64))
            first, last_before = classes[1:, 0], classes[:-1, 1]
            boundary = (first != last_before) & (first != NO_CLASS) & (last_before != NO_CLASS)
            starts[1:] |= eligible[1:] & boundary
        return starts

    def masked_words(self, input_ids: np.ndarray, labels: np.ndarray) -> int:
        """Whole-word masking: how many words of an example (its original ids) ``labels`` chose."""
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
        eligible = ~torch.from_numpy(self._special[ids.numpy()])
        return int((self._word_starts(ids, eligible) & torch.from_numpy(labels != IGNORE_INDEX)).sum())

    def _select_whole_words(
        self, ids: torch.Tensor, eligible: torch.Tensor, gen: torch.Generator, rate: float
    ) -> torch.Tensor:
        starts = self._word_starts(ids, eligible)
        word_id = torch.cumsum(starts.long(), 0) - 1
        word_id[~eligible] = -1
        n_words = int(starts.sum())
        if n_words == 0:
            return torch.zeros_like(eligible)
        chosen = torch.rand(n_words, generator=gen) < rate
        selected = torch.zeros_like(eligible)
        in_word = word_id >= 0
        selected[in_word] = chosen[word_id[in_word]]
        return selected

    def _batch_number(self, example: dict[str, Any]) -> int | None:
        batch_number = example.get("batch")
        if batch_number is None and self.redraw_each_epoch:
            # Not silently the final rate or length: a schedule needs each row's batch (MLMSampler hands it).
            for setting, value in (
                ("data.masking.start_probability", self.start_probability),
                ("data.sequence_warmup.start_length", self.warmup_start),
            ):
                if value is not None:
                    raise MLMError(
                        f"{setting}: this data pipeline gives no batch number with its rows (MLMSampler does), so "
                        "the schedule cannot be followed"
                    )
        return None if batch_number is None else int(batch_number)

    def with_sequence_warmup(self, warmup: SequenceWarmup, max_seq_length: int) -> MLMCollator:
        """This (training) collator with the sequence-length warm-up ``warmup`` (itself when that is off)."""
        if warmup.start_length is None:
            return self
        return replace(self, warmup_start=warmup.start_length, warmup_batches=warmup.steps, warmup_full=max_seq_length)

    def _pieces(self, ids: np.ndarray, batch: int | None) -> list[slice]:
        """The row's pieces: whole, or cut to the sequence-length warm-up's length for training batch ``batch``."""
        if self.warmup_start is None or batch is None or not self.redraw_each_epoch:
            return [slice(0, len(ids))]
        cut = warmup_length(self.warmup_start, self.warmup_batches, self.warmup_full, batch)
        return [slice(i, i + cut) for i in range(0, len(ids), cut)]

    def __call__(self, examples: list[dict[str, Any]]) -> MLMBatch:
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        words = 0
        for ex in examples:
            batch_number = self._batch_number(ex)
            ids, lab = self.mask_example(ex["input_ids"], int(ex.get("epoch", 0)), int(ex["index"]), batch_number)
            # Masked whole, then cut: the same tokens and targets as without a sequence-length warm-up.
            rows += [(ids[piece], lab[piece]) for piece in self._pieces(ids, batch_number)]
            if self.continuation_mask is not None:
                words += self.masked_words(ex["input_ids"], lab)
        lengths = [len(ids) for ids, _ in rows]
        width = max(lengths)
        if self.pad_to_multiple_of > 1:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for row, (ids, lab) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            labels[row, : len(lab)] = lab
        batch: dict[str, Any] = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
        if any(n != width for n in lengths):
            # Only a padded batch gets an attention mask: without one, attention takes its fast (SDPA) path.
            attn = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
            batch["attention_mask"] = torch.from_numpy(attn.astype(np.int64))
        flat = labels.reshape(-1)
        positions = np.flatnonzero(flat != IGNORE_INDEX)
        batch["masked_positions"] = torch.from_numpy(positions)
        batch["masked_labels"] = torch.from_numpy(flat[positions])
        batch["num_tokens"] = int(sum(lengths))  # real (non-pad) tokens, for throughput
        batch["num_token_pairs"] = int(sum(n * n for n in lengths))  # attention's query-key pairs, for MFU
        if self.continuation_mask is not None:
            batch["masked_words"] = words
        return cast(MLMBatch, batch)

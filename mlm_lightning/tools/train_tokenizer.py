"""``python -m mlm_lightning train-tokenizer``: the tokenizer a model family uses, trained on your own corpus.

Each family's record (``Family.tokenizer`` in :mod:`mlm_lightning.families`; ``--family`` is its ``model_type``)
says which kind of tokenizer it uses (WordPiece, byte-level BPE or SentencePiece-style Unigram), its special tokens
in id order, and the ``transformers`` tokenizer class that loads it. Training uses the ``tokenizers`` library's
trainers on that class's own normalizer and pre-tokenizer (taken from an empty instance of the class), so the saved
folder loads with ``AutoTokenizer.from_pretrained`` into exactly the tokenizer that was trained; the command checks
that on the corpus before the folder appears. ``data.tokenizer`` accepts the folder and a from-scratch model
(``model.model_name_or_path: null``) takes its vocabulary size.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from mlm_lightning.errors import MLMError
from mlm_lightning.families import FAMILIES, TokenizerRecipe
from mlm_lightning.io.atomic import atomic_output_dir, check_writable
from mlm_lightning.io.sources import resolve_files

# The families with a tokenizer recipe (``Family.tokenizer``), in the registry's order.
RECIPES: dict[str, TokenizerRecipe] = {name: f.tokenizer for name, f in FAMILIES.items() if f.tokenizer}
# The same names, for the command line's choices (a test keeps the two equal).
TokenizerFamily = Literal["bert", "distilbert", "electra", "roberta", "modernbert", "xlm-roberta", "deberta-v2"]


def _token_kwargs(recipe: TokenizerRecipe) -> dict[str, Any]:
    """The special tokens as keyword arguments of the tokenizer class (``mask_token`` as an ``AddedToken``)."""
    from tokenizers import AddedToken

    kwargs: dict[str, Any] = {f"{role}_token": token for role, token in recipe.specials.items()}
    if recipe.cls_sep != ("cls", "sep"):  # <s> and </s> are also the classifier and separator tokens
        kwargs["cls_token"] = recipe.specials[recipe.cls_sep[0]]
        kwargs["sep_token"] = recipe.specials[recipe.cls_sep[1]]
    kwargs["mask_token"] = AddedToken(recipe.specials["mask"], lstrip=recipe.mask_lstrip, rstrip=False, special=True)
    return {**kwargs, **recipe.class_kwargs}


def _untrained(recipe: TokenizerRecipe, lowercase: bool, min_frequency: int, vocab_size: int) -> tuple[Any, Any]:
    """An empty ``tokenizers.Tokenizer`` with the class's own pipeline, and the trainer for its model."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    template_class = getattr(transformers, recipe.pipeline_class or recipe.tokenizer_class)
    lower = {"do_lower_case": lowercase} if recipe.lowercase is not None else {}
    if recipe.kind == "WordPiece" and not lowercase:
        lower["strip_accents"] = False  # like bert-base-cased: keep accents too
    template = template_class(**_token_kwargs(recipe), **lower).backend_tokenizer
    specials = list(recipe.specials.values())
    if recipe.kind == "WordPiece":
        tok = Tokenizer(models.WordPiece(unk_token=recipe.specials["unk"]))
        # limit_alphabet 1000, as tokenizers' BertWordPieceTokenizer (this command's trainer before families).
        trainer: trainers.Trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, limit_alphabet=1000
        )
    elif recipe.kind == "byte-level BPE":
        tok = Tokenizer(models.BPE())
        # Every byte in the vocabulary: no text is ever unknown.
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=recipe.specials["unk"]
        )
    tok.normalizer = template.normalizer
    tok.pre_tokenizer = template.pre_tokenizer
    tok.decoder = template.decoder
    return tok, trainer


def _wrap(recipe: TokenizerRecipe, trained: Any, lowercase: bool, model_max_length: int) -> Any:
    """The trained backend as the family's ``transformers`` tokenizer (its post-processor: ``[CLS] $A [SEP]``)."""
    import transformers
    from tokenizers import AddedToken, processors

    cls = getattr(transformers, recipe.tokenizer_class)
    kwargs = {**_token_kwargs(recipe), "model_max_length": model_max_length}
    if recipe.lowercase is not None:
        kwargs["do_lower_case"] = lowercase
        if recipe.kind == "WordPiece" and not lowercase:
            kwargs["strip_accents"] = False
    if recipe.tokenizer_class == "PreTrainedTokenizerFast":  # no pipeline of its own: it keeps the backend's
        mask = AddedToken(recipe.specials["mask"], lstrip=recipe.mask_lstrip, special=True, normalized=False)
        trained.add_special_tokens([mask])  # updates the trained entry (same id) with the family's lstrip
        first, last = (recipe.specials[r] for r in recipe.cls_sep)
        trained.post_processor = processors.TemplateProcessing(
            single=f"{first}:0 $A:0 {last}:0",
            pair=f"{first}:0 $A:0 {last}:0 $B:1 {last}:1",
            special_tokens=[(first, trained.token_to_id(first)), (last, trained.token_to_id(last))],
        )
        return cls(tokenizer_object=trained, **kwargs)
    # A class with its own __init__ rebuilds its pipeline from the vocabulary (as AutoTokenizer will on load).
    model = json.loads(trained.to_str())["model"]
    if recipe.kind == "SentencePiece":
        kwargs["vocab"] = [(piece, score) for piece, score in model["vocab"]]
    else:
        kwargs["vocab"] = model["vocab"]
    if recipe.kind == "byte-level BPE":
        kwargs["merges"] = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return cls(**kwargs)


def _check_round_trip(folder: Path, trained: Any, recipe: TokenizerRecipe, samples: list[str]) -> Any:
    """Loads ``folder`` with ``AutoTokenizer`` and checks it tokenizes ``samples`` as trained, specials in place."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(folder)
    first, last = (loaded.convert_tokens_to_ids(recipe.specials[r]) for r in recipe.cls_sep)
    for role, token in recipe.specials.items():
        if getattr(loaded, f"{role}_token") != token:
            raise RuntimeError(
                f"the saved tokenizer's {role}_token is {getattr(loaded, f'{role}_token')!r}, not {token}"
            )
    mask = recipe.specials["mask"]
    probe = loaded.convert_ids_to_tokens(loaded(f"a {mask}", add_special_tokens=False)["input_ids"])
    if probe[-1] != mask or (recipe.mask_lstrip and len(probe) != len(loaded.tokenize("a")) + 1):
        raise RuntimeError(f"the saved tokenizer splits 'a {mask}' into {probe}")
    for text in samples:
        expected = [first, *trained.encode(text, add_special_tokens=False).ids, last]
        if loaded(text)["input_ids"] != expected:  # a bug here, not bad input: never hand out such a folder
            raise RuntimeError(f"the saved tokenizer does not reload as trained (first difference in {text[:60]!r})")
    return loaded


def train_tokenizer(
    files: list[str],
    output_dir: str,
    family: TokenizerFamily = "bert",
    vocab_size: int = 30522,
    lowercase: bool | None = None,
    min_frequency: int = 2,
    text_column: str = "text",
    model_max_length: int = 512,
    overwrite: bool = False,
) -> Path:
    """Trains the tokenizer a model family uses on text files and saves it with ``save_pretrained``.

    Args:
        files: Paths, globs, folders, ``pkg://`` package data or URLs of ``.txt``, ``.jsonl``, ``.csv`` or
            ``.parquet`` files (as ``data.train_files``).
        output_dir: Folder to create; set ``data.tokenizer`` to it.
        family: The model family (its ``model_type``) whose tokenizer to train: WordPiece for ``bert``,
            ``distilbert``, ``electra``; byte-level BPE for ``roberta``, ``modernbert``; SentencePiece-style Unigram
            for ``xlm-roberta`` and ``deberta-v2`` (DeBERTa-v3). Each with that family's special tokens.
        vocab_size: Largest vocabulary, special tokens included (a small corpus may give fewer).
        lowercase: Lowercase the text (WordPiece: and strip accents, as ``bert-base-uncased``); default: the
            family's own (WordPiece families yes, DeBERTa-v3 no; the others cannot lowercase).
        min_frequency: Pieces seen fewer times than this are not added (WordPiece, BPE).
        text_column: The text column of ``.jsonl``, ``.csv`` and ``.parquet`` files.
        model_max_length: Longest input the tokenizer announces (pipelines truncate to it).
        overwrite: Replace ``output_dir`` if it exists (otherwise that is an error).
    """
    from mlm_lightning.data.reading import load_documents

    recipe = RECIPES.get(family)
    if recipe is None:
        raise MLMError(f"--family {family!r} is not one of {', '.join(RECIPES)}")
    if lowercase is None:
        lowercase = bool(recipe.lowercase)
    elif lowercase and recipe.lowercase is None:
        raise MLMError(f"--lowercase true: the {family} tokenizer ({recipe.tokenizer_class}) does not lowercase")
    if vocab_size <= len(recipe.specials):
        raise MLMError(f"vocab_size must be larger than the {len(recipe.specials)} special tokens, got {vocab_size}")
    target = check_writable(output_dir, overwrite)
    paths = resolve_files(files)
    with tempfile.TemporaryDirectory(prefix="mlm-tokenizer-") as scratch:
        docs = load_documents(paths, "line", text_column, "strict", Path(scratch))
        if len(docs) == 0:
            raise MLMError(f"no text in {', '.join(map(str, paths))}")

        def batches(size: int = 1000) -> Iterator[list[str]]:
            for start in range(0, len(docs), size):
                yield docs[start : start + size]["text"]

        trained, trainer = _untrained(recipe, lowercase, min_frequency, vocab_size)
        # tokenizers' progress bar: in a log (not a terminal) it is only three blank lines on standard output.
        trainer.show_progress = sys.stdout.isatty()
        trained.train_from_iterator(batches(), trainer=trainer, length=len(docs))
        tok = _wrap(recipe, trained, lowercase, model_max_length)
        samples = docs[: min(len(docs), 200)]["text"]
        with atomic_output_dir(target, overwrite) as work:
            tok.save_pretrained(work)
            tok = _check_round_trip(Path(work), trained, recipe, samples)
    print(
        f"trained a {recipe.kind} tokenizer ({family}) of {len(tok)} tokens on {len(docs):,} lines "
        f"({len(paths)} files): {target}"
    )
    print(f"example: {samples[0][:60]!r} -> {tok.tokenize(samples[0])[:12]}")
    return target

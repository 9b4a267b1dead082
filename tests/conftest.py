"""Shared fixtures: a small generated corpus, a small WordPiece tokenizer and tiny-model CLI arguments."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from mlm_lightning.training.flops import CPU_PEAK_ENV

# The CPU matmul peak (FLOP/s) every test runs with: fixed, because the probe refuses to measure while other
# processes use the CPU (a test must not depend on the machine being idle), and on a CPU without native bf16 (AVX2
# only) a bf16 probe is slow. A tiny model's MFU stays far below 1. Tests of the probe itself remove it.
FIXED_CPU_PEAK = "1e12"

# huggingface_hub reads these once, when it is first imported (a session fixture may import it before the
# per-test fixture below runs): set them now, so a hub name fails at once instead of after a minute of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

WORDS = (
    "the king queen castle sword crown night day love war peace soul mind nature reason virtue honour "
    "death life time world heart blood fortune gods man woman friend enemy country lord lady speak think "
    "see hear know come go give take make find keep hold bear fall rise stand walk fight sleep dream "
    "unto thee thou thy hath doth shall would could should never ever always often seldom gentle noble "
    "bright dark sweet bitter cold warm wise foolish brave true false fair foul strange wonderful"
).split()


def make_corpus(n_docs: int = 400, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "." for _ in range(n_docs)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own tokenization cache, so tests never see each other's corpora."""
    monkeypatch.setenv("MLM_LIGHTNING_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv(CPU_PEAK_ENV, FIXED_CPU_PEAK)  # train/mfu whatever the load; no test probes the CPU


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(make_corpus()) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~200-token WordPiece tokenizer trained on the generated corpus (saved like a hub tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(make_corpus(seed=1), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(str(out))
    return out


def tiny_cli_args(corpus_file: Path, tokenizer_dir: Path, root: Path) -> list[str]:
    """CLI arguments for a seconds-long fit of a tiny from-scratch BERT on the generated corpus, into ``root``."""
    return [
        "--config",
        str(Path(__file__).parents[1] / "configs" / "tiny.yaml"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_steps",
        "12",
        "--trainer.val_check_interval",
        "6",
        "--trainer.log_every_n_steps",
        "2",
        "--data.train_files",
        f"[{corpus_file}]",
        "--data.tokenizer",
        str(tokenizer_dir),
        "--data.text_layout",
        "line",
        "--data.max_seq_length",
        "32",
        "--data.batch_size",
        "8",
        "--data.val_fraction",
        "0.1",
        "--model.max_position_embeddings",
        "64",
    ]


@pytest.fixture
def tiny_args(corpus_file: Path, tokenizer_dir: Path, tmp_path: Path) -> list[str]:
    """CLI arguments for a seconds-long fit of a tiny from-scratch BERT on the generated corpus."""
    return tiny_cli_args(corpus_file, tokenizer_dir, tmp_path / "run")


PROBES = ["the [MASK] of the king.", "thou art a [MASK] and a [MASK]."]


@pytest.fixture(scope="session")
def trained_run(corpus_file: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fit (12 steps, validation every 6) with probes and export at the end; returns its root folder.

    Shared by the export, fill-mask and dashboard tests so they cost one fit between them.
    """
    from mlm_lightning.__main__ import main

    base = tmp_path_factory.mktemp("trained")
    args = tiny_cli_args(corpus_file, tokenizer_dir, base / "run")
    args += ["--data.cache_dir", str(base / "cache"), "--probes.sentences", json.dumps(PROBES)]
    with pytest.MonkeyPatch.context() as mp:  # session scope: the per-test autouse fixture is not active yet
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("MLM_LIGHTNING_CACHE", str(base / "cache"))
        mp.setenv(CPU_PEAK_ENV, FIXED_CPU_PEAK)  # train/mfu whatever the load
        assert main(["fit", *args, "--export.enabled", "true"]) == 0
    return base / "run"


def named_sets(general: Path) -> list[str]:
    """``data.val_files`` as two named validation sets: ``domain`` (held out of the training files), ``general``."""
    return ["--data.val_files", json.dumps({"domain": None, "general": [str(general)]})]


@pytest.fixture(scope="session")
def general_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second validation text: other documents of the same words."""
    path = tmp_path_factory.mktemp("general") / "general.txt"
    path.write_text("\n".join(make_corpus(n_docs=60, seed=9)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def adapted_run(
    trained_run: Path, corpus_file: Path, tokenizer_dir: Path, general_file: Path, tmp_path_factory
) -> Path:
    """The trained tiny model's export adapted for 12 more steps, validated on two named sets; returns its root.

    A pretrained model (``model.model_name_or_path``): validation before the first step is on by default.
    """
    from mlm_lightning.__main__ import main

    base = tmp_path_factory.mktemp("adapted")
    args = tiny_cli_args(corpus_file, tokenizer_dir, base / "run")
    args += ["--model.model_name_or_path", str(trained_run / "export"), *named_sets(general_file)]
    args += ["--export.enabled", "true", "--data.cache_dir", str(base / "cache")]
    with pytest.MonkeyPatch.context() as mp:  # session scope: the per-test autouse fixture is not active yet
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("MLM_LIGHTNING_CACHE", str(base / "cache"))
        assert main(["fit", *args]) == 0
    return base / "run"

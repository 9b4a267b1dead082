"""Every example config of configs/families/ trains, exports and answers fill-mask with its family's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlm_lightning.__main__ import main

ROOT = Path(__file__).parents[1]
# config -> (model_type, tokenizer class AutoTokenizer builds, mask token)
FAMILY_CONFIGS = {
    "distilbert": ("distilbert", "DistilBertTokenizer", "[MASK]"),
    "electra": ("electra", "BertTokenizer", "[MASK]"),
    "roberta": ("roberta", "RobertaTokenizer", "<mask>"),
    "modernbert": ("modernbert", "TokenizersBackend", "[MASK]"),
    "xlm-roberta": ("xlm-roberta", "XLMRobertaTokenizer", "<mask>"),
    "deberta-v3": ("deberta-v2", "DebertaV2Tokenizer", "[MASK]"),
}
FAST = {"roberta"}  # one family in the fast suite; the rest (seconds each) with the slow tests


def test_every_family_has_a_config() -> None:
    assert {p.stem for p in (ROOT / "configs" / "families").glob("*.yaml")} == set(FAMILY_CONFIGS)


def test_deberta_v3_config_builds_deberta_v3s_architecture() -> None:
    import yaml

    from mlm_lightning.model.module import MLMModule

    model = yaml.safe_load((ROOT / "configs" / "families" / "deberta-v3.yaml").read_text())["model"]
    sizes = {k: v for k, v in model.items() if k not in ("learning_rate", "warmup_steps", "scheduler")}
    config = MLMModule(vocab_size=1000, **sizes).model.config
    assert config.model_type == "deberta-v2" and config.hidden_size == 32
    # microsoft/deberta-v3-base's config.json; transformers' DebertaV2Config defaults differ in all but the last
    v3 = {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False}
    v3 |= {"norm_rel_ebd": "layer_norm", "share_att_key": True, "position_buckets": 256, "max_relative_positions": -1}
    assert {k: getattr(config, k, None) for k in v3} == v3


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in FAMILY_CONFIGS])
def test_family_config_fits_exports_and_fills_masks(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    model_type, tokenizer_class, mask = FAMILY_CONFIGS[name]
    monkeypatch.chdir(ROOT)  # the config names its tokenizer relative to the repository root
    args = ["fit", "--config", f"configs/families/{name}.yaml", "--trainer.default_root_dir", str(tmp_path)]
    steps = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2"]
    assert main([*args, *steps, "--trainer.enable_progress_bar", "false"]) == 0
    export = tmp_path / "export"
    model = AutoModelForMaskedLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert model.config.model_type == model_type and type(tok).__name__ == tokenizer_class
    assert tok.mask_token == mask and model.config.vocab_size == len(tok) == 1000
    if name == "deberta-v3":  # its export keeps the v3 architecture (config_overrides)
        assert model.config.relative_attention and model.config.share_att_key and model.config.position_buckets == 256
    # transformers' own pipeline, from the folder alone, with the family's own mask token.
    out = pipeline("fill-mask", model=str(export), top_k=3)(f"the {mask} of Scotland")
    assert len(out) == 3 and all(c["token"] not in tok.all_special_ids for c in out)
    assert all(c["sequence"].startswith("the") for c in out)
    capsys.readouterr()
    assert main(["fill-mask", "--model", str(export), "the [MASK] of Scotland"]) == 0  # [MASK]: any family's
    assert capsys.readouterr().out.startswith("the [MASK] of Scotland")

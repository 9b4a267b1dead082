"""Every masked-LM family: the masked-only head gives the model's own loss and gradients; from-scratch sizes."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from mlm_lightning import families, family_config
from mlm_lightning.errors import MLMError
from mlm_lightning.model.build import Architecture, build_model
from mlm_lightning.model.head import HEAD_ROWS_MULTIPLE
from mlm_lightning.model.module import MLMModule
from tests.conftest import make_corpus

VOCAB = 100
SETTINGS = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    dropout=0.0,
    pad_token_id=0,
)
# What the shared settings do not cover, for families that need it at this size.
EXTRAS: dict[str, dict] = {
    "big_bird": {"attention_type": "original_full"},  # block-sparse needs far longer rows
    "longformer": {"attention_window": 8},
    "xmod": {"default_language": "en_XX"},
    "funnel": {"block_sizes": [1, 1], "d_model": 32, "n_head": 2, "d_head": 16, "d_inner": 48},
    "reformer": {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "attention_head_size": 16,
        "feed_forward_size": 48,
        "attn_layers": ["local", "local"],
        "local_attn_chunk_length": 4,
        "axial_pos_shape": [4, 4],
        "axial_pos_embds_dim": [16, 16],
        "max_position_embeddings": 16,
        "is_decoder": False,
        "hidden_dropout_prob": 0.0,
        "local_attention_probs_dropout_prob": 0.0,
    },
}
# DeBERTa-v3's architecture: microsoft/deberta-v3-base's config.json, as configs/families/deberta-v3.yaml sets it.
DEBERTA_V3 = {
    "relative_attention": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "position_buckets": 256,
    "max_relative_positions": -1,
}
HEADS = [f.name for f in families.FAMILIES.values() if f.head]
# (family, config overrides): every family with a masked-only head, DeBERTa in both head layouts and as v3.
HEAD_CASES = [(f, {}) for f in HEADS] + [("deberta", {"legacy": False}), ("deberta-v2", {"legacy": False})]
HEAD_CASES += [("deberta-v2", DEBERTA_V3)]


def tiny_model(family: str, **overrides: object) -> torch.nn.Module:
    if families.family(family).no_from_scratch:
        config = AutoConfig.for_model(family, vocab_size=VOCAB, pad_token_id=0, **EXTRAS[family], **overrides)
    else:
        kwargs = family_config.config_kwargs(family, SETTINGS, None)
        config = AutoConfig.for_model(family, **{**kwargs, **EXTRAS.get(family, {}), **overrides})
    return AutoModelForMaskedLM.from_config(config)


def tiny_batch(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (3, 16), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:] = 0  # a padded row
    input_ids[attention_mask == 0] = 0
    labels = torch.where(torch.rand(input_ids.shape, generator=g) < 0.25, input_ids, -100)
    labels[attention_mask == 0] = -100
    labels[0, 3] = input_ids[0, 3]
    positions = (labels.flatten() != -100).nonzero().squeeze(1)
    batch = {"input_ids": input_ids, "labels": labels, "masked_positions": positions}
    batch["masked_labels"] = labels.flatten().index_select(0, positions)
    if families.family(family).attention_mask:
        batch["attention_mask"] = attention_mask
    return batch


def test_every_masked_lm_family_is_decided() -> None:
    """A family transformers adds must be looked at: a masked-only head, or a reason why not."""
    undecided = [
        f for f in MODEL_FOR_MASKED_LM_MAPPING_NAMES if not families.family(f).head and not families.family(f).no_head
    ]
    assert not undecided
    assert not [f.name for f in families.FAMILIES.values() if f.head and f.no_head]


# make test checks the families of the shipped configs (configs/families/); CI (make test-all) checks every one.
FAST_HEADS = {"bert", "distilbert", "electra", "roberta", "modernbert", "xlm-roberta", "deberta-v2"}
HEAD_PARAMS = [
    pytest.param(f, o, id=f"{f}-{'-'.join(o)}", marks=() if f in FAST_HEADS and not o else pytest.mark.slow)
    for f, o in HEAD_CASES
]


@pytest.mark.parametrize(("family", "overrides"), HEAD_PARAMS)
def test_masked_head_gives_the_models_own_loss_and_gradients(
    family: str, overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    if family not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # the registry has families newer than the lowest transformers
        pytest.skip(f"the installed transformers has no {family}")
    torch.manual_seed(0)
    tiny = tiny_model(family, **overrides)
    monkeypatch.setattr("mlm_lightning.model.build.build_model", lambda *args: tiny)
    # eval: no dropout (Reformer's backward needs train mode: its dropouts are 0 in EXTRAS).
    module = MLMModule(vocab_size=VOCAB).train(family == "reformer")
    model, batch = module.model, tiny_batch(family)
    assert module.mlm_head() is not None

    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    own = model(**kwargs, labels=batch["labels"]).loss
    own.backward()
    own_grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    # Every module outside the encoder (the head) must see the masked rows only.
    rows: dict[str, int] = {}
    encoder = {id(m) for m in model.base_model.modules()}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: rows.__setitem__(name, args[0].shape[0]))
        for name, m in model.named_modules()
        if id(m) not in encoder and m is not model
    ]
    logits = module.masked_logits(batch)
    for hook in hooks:
        hook.remove()
    n = batch["masked_positions"].numel()
    # The masked rows only, padded on a CPU to a multiple of HEAD_ROWS_MULTIPLE (cut off before the loss).
    assert rows and set(rows.values()) == {-(-n // HEAD_ROWS_MULTIPLE) * HEAD_ROWS_MULTIPLE}, rows
    assert logits.shape == (n, model.config.vocab_size)

    loss = F.cross_entropy(logits.float(), batch["masked_labels"])
    loss.backward()
    torch.testing.assert_close(loss, own, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        if own_grads[name] is None:
            assert param.grad is None or not param.grad.any(), name
        else:
            torch.testing.assert_close(param.grad, own_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["bart", "xlm-asm"])
def test_full_logits_families_say_so_once_and_match(family: str, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    if family == "xlm-asm":
        model_type, extra = "xlm", {"asm": True}
    else:
        model_type, extra = family, {}
    module = MLMModule(model_type=model_type, **SETTINGS)
    if extra:  # only the setting decides
        module.model.config.asm = True
    module.eval()
    batch = tiny_batch(model_type)
    with caplog.at_level(logging.INFO):
        if family == "xlm-asm":
            assert module.mlm_head() is None and module.mlm_head() is None
        else:
            fast = module.masked_logits(batch)
            module.masked_logits(batch)
            kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            full = module.model(**kwargs).logits.flatten(0, 1)[batch["masked_positions"]]
            torch.testing.assert_close(fast, full)
    said = [r.getMessage() for r in caplog.records if "every position" in r.getMessage()]
    assert len(said) == 1 and model_type in said[0]


def test_compile_covers_the_full_logits_path(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    module = MLMModule(model_type="bart", compile=True, **SETTINGS)  # training: on a CPU evaluation is eager
    module.masked_logits(tiny_batch("bart"))
    assert compiled == [module.model]  # the whole model, since that is what runs
    module = MLMModule(model_type="bert", compile=True, **SETTINGS)
    module.masked_logits(tiny_batch("bert"))
    assert compiled[-1] is module.model.base_model


# -- from scratch ----------------------------------------------------------------------------------------------
FROM_SCRATCH = sorted(f for f in MODEL_FOR_MASKED_LM_MAPPING_NAMES if not families.family(f).no_from_scratch)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights count once


@pytest.mark.parametrize("family", FROM_SCRATCH)
def test_from_scratch_builds_the_requested_sizes(family: str) -> None:
    settings = {**SETTINGS, "dropout": 0.125}
    model = build_model(Architecture(model_type=family, embedding_size=None, **settings))
    config = model.config
    names = families.family(family).config_names
    declared = {f.name for f in dataclasses.fields(type(config))}
    for setting in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "dropout"):
        for name in names[setting]:
            if name in declared:  # read back under the family's own name (others were reported as ignored)
                assert getattr(config, name) == settings[setting], (setting, name)
    assert model.get_input_embeddings().weight.shape == (VOCAB, 32)  # embedding_size too defaults to hidden_size
    if family in HEADS:  # the encoder's output width, read from a forward pass
        hidden = model.base_model(input_ids=torch.ones(1, 8, dtype=torch.long))[0]
        assert hidden.shape[-1] == 32
    for name, value in config.to_dict().items():
        if name.endswith("_token_id") and isinstance(value, int) and name != "mask_token_id":
            assert value < VOCAB, name  # EuroBERT's mask_token_id cannot be None: the tokenizer's is linked in


def test_from_scratch_names_per_family() -> None:
    distil = build_model(Architecture(model_type="distilbert", embedding_size=None, **SETTINGS)).config
    assert (distil.dim, distil.n_layers, distil.n_heads, distil.hidden_dim) == (32, 2, 2, 48)
    modern = build_model(
        Architecture(model_type="modernbert", embedding_size=None, **{**SETTINGS, "dropout": 0.2})
    ).config
    assert modern.attention_dropout == modern.mlp_dropout == modern.embedding_dropout == 0.2
    assert modern.bos_token_id is None and modern.cls_token_id is None  # defaults 50281.. lie outside 100 ids
    electra = build_model(Architecture(model_type="electra", embedding_size=None, **SETTINGS))
    assert electra.config.embedding_size == 32
    assert electra.generator_lm_head.weight.shape == (VOCAB, 32)
    albert = build_model(Architecture(model_type="albert", embedding_size=16, **SETTINGS))
    assert albert.albert.embeddings.word_embeddings.weight.shape == (VOCAB, 16)


def test_from_scratch_says_what_does_not_apply() -> None:
    with pytest.warns(UserWarning, match="model_type=fnet has no setting for num_attention_heads: ignored"):
        build_model(Architecture(model_type="fnet", embedding_size=None, **SETTINGS))
    with pytest.warns(UserWarning, match="model_type=bert has no setting for embedding_size"):
        build_model(Architecture(model_type="bert", embedding_size=16, **SETTINGS))
    with pytest.raises(MLMError, match="model_type=funnel sets its depth by block_sizes"):
        build_model(Architecture(model_type="funnel", embedding_size=None, **SETTINGS))
    with pytest.raises(MLMError, match="cannot build a new bert model"):
        build_model(Architecture(model_type="bert", embedding_size=None, **{**SETTINGS, "num_attention_heads": 5}))


def test_config_overrides_build_deberta_v3() -> None:
    model = build_model(Architecture(model_type="deberta-v2", config_overrides=DEBERTA_V3, **SETTINGS))
    assert {k: getattr(model.config, k) for k in DEBERTA_V3} == DEBERTA_V3
    assert model.config.hidden_size == 32  # the settings still apply
    assert model.deberta.embeddings.position_embeddings is None  # relative positions only
    assert model.deberta.encoder.rel_embeddings.weight.shape == (2 * 256, 32)  # 2 x position_buckets
    assert model.deberta.encoder.LayerNorm is not None  # norm_rel_ebd: layer_norm
    attention = model.deberta.encoder.layer[0].attention.self
    assert attention.share_att_key and not hasattr(attention, "pos_key_proj")  # shared keys: no own projections
    default = build_model(Architecture(model_type="deberta-v2", **SETTINGS))
    assert not default.config.relative_attention and default.deberta.embeddings.position_embeddings is not None


def test_config_overrides_reload_from_the_checkpoint_alone(tmp_path: Path) -> None:
    import lightning as L

    module = MLMModule(model_type="deberta-v2", config_overrides=DEBERTA_V3, **SETTINGS)
    path = tmp_path / "v3.ckpt"
    hparams = dict(module.hparams)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__},
        path,
    )
    again = MLMModule.load_from_checkpoint(path)  # torch.load(weights_only=True): plain values only
    assert again.hparams.config_overrides == DEBERTA_V3 and again.model.config.share_att_key
    ids = torch.randint(5, VOCAB, (1, 8))
    torch.testing.assert_close(again.eval()(ids), module.eval()(ids))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"share_att_keys": True}, "model.config_overrides.share_att_keys: model_type=deberta-v2 has no config field"),
        ({"hidden_dropout_prob": 0.2}, "model.config_overrides.hidden_dropout_prob: set by model.dropout"),
        ({"hidden_size": 64}, "model.config_overrides.hidden_size: set by model.hidden_size"),
        ({"pad_token_id": 1}, "model.config_overrides.pad_token_id: set by data.tokenizer"),
        ({"vocab_size": 10}, "model.config_overrides.vocab_size: set by data.tokenizer"),
        ({"position_buckets": True}, "model.config_overrides.position_buckets is True: model_type=deberta-v2 takes"),
        (
            {"relative_attention": "often"},
            "cannot build a new deberta-v2 model from these settings: .*relative_attention",
        ),
    ],
)
def test_bad_config_overrides_are_one_line(
    overrides: dict, message: str, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    from mlm_lightning.__main__ import main

    args = [*tiny_args, "--model.model_type", "deberta-v2", "--model.config_overrides", json.dumps(overrides)]
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_config_overrides_of_distilbert_know_its_aliases() -> None:
    with pytest.raises(MLMError, match="config_overrides.dim: set by model.hidden_size"):
        build_model(Architecture(model_type="distilbert", config_overrides={"dim": 64}, **SETTINGS))
    config = build_model(
        Architecture(model_type="distilbert", config_overrides={"sinusoidal_pos_embds": True}, **SETTINGS)
    ).config
    assert config.sinusoidal_pos_embds and config.dim == 32


def test_config_overrides_with_a_pretrained_model_is_an_error(
    tiny_args: list[str], tokenizer_dir: Path, tmp_path: Path, capsys
) -> None:
    from mlm_lightning.__main__ import main

    folder = tmp_path / "pretrained"
    build_model(Architecture(model_type="bert", **{**SETTINGS, "vocab_size": 200})).save_pretrained(folder)
    args = [*tiny_args, "--model.model_name_or_path", str(folder), "--model.config_overrides", '{"type_vocab_size": 1}']
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.config_overrides builds a new model only" in errors[0], err


def test_parameter_count_matches_the_formula() -> None:
    v, h, layers, f, p = VOCAB, 32, 2, 48, 64
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h  # attention, norm, feed-forward, norm
    head = (h * h + h) + 2 * h + v  # transform, norm, output bias (the projection is tied to the embeddings)
    bert = (v + p + 2) * h + 2 * h + layers * layer + head  # word, position, 2 token types, norm
    distilbert = (v + p) * h + 2 * h + layers * layer + head
    assert n_params(build_model(Architecture(model_type="bert", embedding_size=None, **SETTINGS))) == bert
    assert n_params(build_model(Architecture(model_type="distilbert", embedding_size=None, **SETTINGS))) == distilbert


# -- special-token ids from the tokenizer ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roberta_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~300-token byte-level BPE tokenizer with RoBERTa's special tokens: <s> 0, <pad> 1, </s> 2, <unk> 3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        make_corpus(seed=1), trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    out = tmp_path_factory.mktemp("roberta-tokenizer")
    fast.save_pretrained(str(out))
    return out


def fit_args(args: list[str], *extra: str) -> list[str]:
    return [*args, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", *extra]


ID_FAMILIES = ["bert", "distilbert", "electra", "roberta", "xlm-roberta", "modernbert", "deberta-v2", "albert"]
ID_FAMILIES += ["eurobert", "mpnet", "fnet", "xlm"]


@pytest.mark.parametrize("family", ID_FAMILIES)
@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_new_model_takes_the_tokenizers_special_ids(
    family: str, kind: str, tokenizer_dir: Path, roberta_tokenizer_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir if kind == "wordpiece" else roberta_tokenizer_dir))
    ids = family_config.special_token_ids(tok)
    settings = {**SETTINGS, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    config = MLMModule(model_type=family, special_token_ids=ids, **settings).model.config
    declared = {f.name for f in dataclasses.fields(type(config))}
    for role in family_config.TOKEN_ROLES:
        field = f"{role}_token_id"
        if field not in declared:
            continue
        expected = getattr(tok, field)
        if expected is None and field in family_config.SAME_TOKEN:  # a WordPiece tokenizer has no <s>/</s>
            default = next(f.default for f in dataclasses.fields(type(config)) if f.name == field)
            expected = None if default is None else getattr(tok, family_config.SAME_TOKEN[field])
        assert getattr(config, field) == expected, field
    assert config.pad_token_id == tok.pad_token_id
    if family == "modernbert":  # its defaults (50281..) lie outside the vocabulary
        assert (config.cls_token_id, config.sep_token_id) == (tok.cls_token_id, tok.sep_token_id)
        assert (config.bos_token_id, config.eos_token_id) == (tok.cls_token_id, tok.sep_token_id)
    if family == "eurobert":
        assert config.mask_token_id == tok.mask_token_id


def test_cli_links_the_special_ids_and_roberta_positions_start_after_its_pad(
    tiny_args: list[str], roberta_tokenizer_dir: Path
) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli

    args = fit_args(tiny_args, "--model.model_type", "roberta", "--data.tokenizer", str(roberta_tokenizer_dir))
    cli = run_cli(args, run=False)
    model = cli.model.model
    assert cli.model.hparams.pad_token_id == 1
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (1, 0, 2)
    assert model.roberta.embeddings.padding_idx == 1
    # <s> a b </s> <pad> <pad>: positions from padding_idx + 1 = 2 for the real tokens, the padding index for pads.
    tok = cli.datamodule.tokenizer
    batch = tok(["king queen", "king"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == 1
    ids = batch["input_ids"]
    positions = model.roberta.embeddings.create_position_ids_from_input_ids(ids, model.roberta.embeddings.padding_idx)
    lengths = batch["attention_mask"].sum(1).tolist()
    for row, n in enumerate(lengths):
        assert positions[row].tolist() == [2 + i for i in range(n)] + [1] * (ids.shape[1] - n)


# -- a tokenizer that does not belong to the pretrained model ----------------------------------------------------
def save_tiny(family: str, folder: Path, tokenizer: Path | None = None, vocab: int = 320) -> Path:
    """A tiny pretrained ``family`` model (its family's default special ids), with ``tokenizer`` saved beside it."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    kwargs = family_config.config_kwargs(family, {**SETTINGS, "vocab_size": vocab}, None)
    if family == "roberta":
        kwargs.pop("pad_token_id")  # the family's own default: 1
    AutoModelForMaskedLM.from_config(AutoConfig.for_model(family, **kwargs)).save_pretrained(folder)
    if tokenizer is not None:
        AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("bundled", [False, True], ids=["config-only", "with-tokenizer"])
def test_bert_vocabulary_into_a_pretrained_roberta_is_an_error(
    bundled: bool, tiny_args: list[str], tmp_path: Path, roberta_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """tiny.yaml pins a WordPiece tokenizer; only the model is overridden with a RoBERTa: no silent training."""
    from mlm_lightning.__main__ import main

    roberta = save_tiny("roberta", tmp_path / "roberta", roberta_tokenizer_dir if bundled else None)
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["fit", *fit_args(tiny_args, "--model.model_name_or_path", str(roberta))]) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("Loading weights")
    ]
    assert len(err) == 1 and err[0].startswith(
        f"error: data.tokenizer={tiny_args[tiny_args.index('--data.tokenizer') + 1]}"
    )
    if bundled:  # the tokenizer saved with the model: 300 tokens, the configured WordPiece one 200
        assert "the tokenizer saved with the model has 300 tokens, data.tokenizer 200" in err[0]
    else:  # RoBERTa's <pad> is 1, the WordPiece [PAD] 0
        assert "its config has pad_token_id 1 (tokenizer: 0)" in err[0]
    assert not (tmp_path / "run").exists()
    # Its own tokenizer (given, or left unset) trains.
    args = fit_args(tiny_args, "--model.model_name_or_path", str(roberta), "--data.tokenizer")
    assert main(["fit", *args, str(roberta) if bundled else str(roberta_tokenizer_dir)]) == 0


def test_only_cls_sep_disagreeing_is_one_warning(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = save_tiny("modernbert", tmp_path / "modern")
    config = AutoConfig.from_pretrained(folder)
    config.pad_token_id, config.cls_token_id = tok.pad_token_id, tok.cls_token_id + 1
    config.bos_token_id, config.sep_token_id, config.eos_token_id = tok.cls_token_id, tok.sep_token_id, None
    config.save_pretrained(folder)
    ids = family_config.special_token_ids(tok)
    with pytest.warns(
        UserWarning, match=f"has cls_token_id {tok.cls_token_id + 1} \\(tokenizer: {tok.cls_token_id}\\)"
    ):
        MLMModule(
            model_name_or_path=str(folder),
            tokenizer_name_or_path=str(tokenizer_dir),
            special_token_ids=ids,
            vocab_size=len(tok),
        )


# -- FSDP units ----------------------------------------------------------------------------------------------------
FSDP_LAYERS = {
    "bert": {"BertEmbeddings", "BertLayer"},
    "distilbert": {"TransformerBlock"},
    "electra": {"ElectraLayer"},
    "roberta": {"RobertaEmbeddings", "RobertaLayer"},
    "xlm-roberta": {"XLMRobertaEmbeddings", "XLMRobertaLayer"},
    "modernbert": {"ModernBertEmbeddings", "ModernBertEncoderLayer"},
    "deberta-v2": {"DebertaV2Layer"},
    "albert": {"AlbertLayerGroup"},  # one group of one layer, shared across the depth
    "eurobert": {"EuroBertDecoderLayer"},
}


@pytest.mark.parametrize("family", list(FSDP_LAYERS))
def test_fsdp_wraps_each_familys_own_layers(family: str) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from mlm_lightning.model.sharding import fill_auto_wrap_policy, layer_classes

    model = tiny_model(family)
    assert {c.__name__ for c in layer_classes(model)} == FSDP_LAYERS[family]
    strategy = FSDPStrategy()  # as the overlay builds it: no policy
    fill_auto_wrap_policy(strategy, model)
    policy = strategy.kwargs["auto_wrap_policy"]
    wrapped = {type(m).__name__ for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)}
    assert wrapped == {c.__name__ for c in layer_classes(model)}
    layers = sum(
        type(m).__name__ in FSDP_LAYERS[family] and "Embeddings" not in type(m).__name__ for m in model.modules()
    )
    assert layers == (1 if family == "albert" else SETTINGS["num_hidden_layers"])


def test_fsdp_policy_given_in_the_config_is_kept() -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.bert.modeling_bert import BertLayer

    from mlm_lightning.model.sharding import fill_auto_wrap_policy

    strategy = FSDPStrategy(auto_wrap_policy={BertLayer})
    policy = strategy.kwargs["auto_wrap_policy"]
    fill_auto_wrap_policy(strategy, tiny_model("roberta"))
    assert strategy.kwargs["auto_wrap_policy"] is policy


def test_module_setup_fills_the_fsdp_policy_before_the_strategy_wraps() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    module = MLMModule(model_type="roberta", **SETTINGS)
    strategy = FSDPStrategy(parallel_devices=[torch.device("cpu")])  # as a Trainer connects it
    module._trainer = SimpleNamespace(strategy=strategy, datamodule=None)
    module.setup("fit")
    layer = module.model.roberta.encoder.layer[0]
    assert strategy.kwargs["auto_wrap_policy"](module=layer, recurse=False, nonwrapped_numel=0)


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert", "fnet"])
def test_forward_passes_the_attention_mask_where_the_family_takes_one(family: str) -> None:
    torch.manual_seed(0)
    module = MLMModule(model_type=family, **SETTINGS).eval()
    ids = torch.randint(5, VOCAB, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        logits = module(ids, mask)
        unmasked = module(ids)
    if not families.family(family).attention_mask:  # mixes the padding in by design: the mask changes nothing
        torch.testing.assert_close(logits, unmasked)
    else:  # the padded row's real tokens no longer see the padding; the unpadded row is unchanged
        assert not torch.allclose(logits[1, :7], unmasked[1, :7])
        torch.testing.assert_close(logits[0], unmasked[0])
        with torch.no_grad():
            torch.testing.assert_close(logits, module.model(input_ids=ids, attention_mask=mask).logits)


def test_eurobert_mask_id_is_the_tokenizers(tmp_path: Path, tokenizer_dir: Path) -> None:
    """EuroBERT's config records a mask id (128002 by default): a new model takes the tokenizer's, and a pretrained
    one whose id is not the tokenizer's is refused (the collator masks with the tokenizer's id)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = family_config.special_token_ids(tok)
    new = MLMModule(model_type="eurobert", special_token_ids=ids, **{**SETTINGS, "vocab_size": len(tok)})
    assert new.model.config.mask_token_id == tok.mask_token_id == 4
    new.model.save_pretrained(tmp_path / "good")
    MLMModule(model_name_or_path=str(tmp_path / "good"), special_token_ids=ids, vocab_size=len(tok))
    new.model.config.mask_token_id = 7
    new.model.save_pretrained(tmp_path / "bad")
    with pytest.raises(MLMError, match="its config has mask_token_id 7 \\(tokenizer: 4\\)"):
        MLMModule(model_name_or_path=str(tmp_path / "bad"), special_token_ids=ids, vocab_size=len(tok))


@pytest.mark.slow
def test_resume_with_a_tokenizer_of_other_special_ids_is_an_error(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same size, [PAD] and [UNK] swapped: the new model's padding index would silently move."""
    from tokenizers import Tokenizer

    from mlm_lightning.__main__ import main

    given = Path(tiny_args[tiny_args.index("--data.tokenizer") + 1])
    swapped = json.loads(Tokenizer.from_file(str(given / "tokenizer.json")).to_str())
    vocab = swapped["model"]["vocab"]
    vocab["[PAD]"], vocab["[UNK]"] = vocab["[UNK]"], vocab["[PAD]"]
    for token in swapped["added_tokens"]:
        token["id"] = vocab[token["content"]]
    other = tmp_path / "swapped"
    other.mkdir()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (given / name).exists():
            (other / name).write_text((given / name).read_text())
    (other / "tokenizer.json").write_text(json.dumps(swapped))
    assert main(["fit", *fit_args(tiny_args)]) == 0
    capsys.readouterr()
    resume = [*fit_args(tiny_args), "--trainer.max_steps", "4", "--ckpt_path", "last", "--data.tokenizer", str(other)]
    assert main(["fit", *resume]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "has the special-token ids" in err[0] and "set data.tokenizer to the checkpoint's" in err[0]
    )


def test_a_model_whose_own_tokenizer_disagrees_with_its_config_is_one_warning(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """Refusing would leave no way to train it: its own files disagree (config <pad> 1, its tokenizer's [PAD] 0)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = save_tiny("roberta", tmp_path / "roberta", tokenizer_dir)
    ids = family_config.special_token_ids(tok)
    with pytest.warns(UserWarning, match="its config has pad_token_id 1 \\(tokenizer: 0\\).*its own tokenizer says"):
        MLMModule(
            model_name_or_path=str(folder),
            tokenizer_name_or_path=str(folder),
            special_token_ids=ids,
            vocab_size=len(tok),
        )

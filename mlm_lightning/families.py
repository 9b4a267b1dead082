"""The family registry: one :class:`Family` record per masked-LM family (a ``model_type``), read by every module.

A record says where the family's vocabulary head sits, what its config calls our settings, what a new model of
it needs, where its position ids start, which tokenizer ``train-tokenizer --family`` trains for it and which
modules are its FSDP units. :func:`family` gives the record of any ``model_type``: families without one get the
defaults (BERT's names, an attention mask, no masked-only head). Adding a family: docs/adding-a-family.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

# Our architecture settings under BERT's config names: every family's default (``Family.config_names``).
BERT_NAMES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size",),
    "num_hidden_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "max_position_embeddings": ("max_position_embeddings",),
    "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
}
# Where a config keeps the dropout on attention probabilities (model.attention_dropout): BERT and its descendants
# under the first name, DistilBERT, ModernBERT, BART and others under the second; a config with neither has none.
ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attention_dropout")

# How each tokenizer kind (:func:`mlm_lightning.data.tokenizer.tokenizer_family`) marks words in its pieces: the
# marker, and whether it starts a word (True: the space a piece begins with) or continues one (False: "##").
TokenizerKind = Literal["WordPiece", "byte-level BPE", "SentencePiece"]
WORD_MARKERS: dict[str, tuple[str, bool]] = {
    "WordPiece": ("##", False),  # the model's continuing_subword_prefix where it has one
    "byte-level BPE": ("\u0120", True),  # "Ġ", the byte-level image of a space
    "SentencePiece": ("\u2581", True),  # "▁", or the replacement its Metaspace pre-tokenizer names
}


@dataclass(frozen=True)
class TokenizerRecipe:
    """What one family's tokenizer is (``train-tokenizer --family``).

    Attributes:
        kind: ``WordPiece``, ``byte-level BPE`` or ``SentencePiece`` (a key of :data:`WORD_MARKERS`).
        tokenizer_class: The ``transformers`` class written to ``tokenizer_config.json`` (what ``AutoTokenizer``
            builds); ``PreTrainedTokenizerFast`` loads ``tokenizer.json`` as it is.
        specials: Role (``pad``, ``unk``, ``cls``, ``sep``, ``mask``, ``bos``, ``eos``) -> token, in id order from 0:
            the ids the family's pretrained vocabularies give them where that is the start (RoBERTa/XLM-R
            ``<s>``=0, ``<pad>``=1; BERT ``[PAD]``=0; DeBERTa-v3 ``[PAD]``=0, ``[CLS]``=1).
        cls_sep: The roles that start and end an input (``[CLS] ... [SEP]``, ``<s> ... </s>``).
        pipeline_class: The class whose normalizer, pre-tokenizer and decoder are trained on (default
            ``tokenizer_class``; ``PreTrainedTokenizerFast`` has none of its own).
        lowercase: The family's default for ``--lowercase``; ``None``: its class has no lowercasing, so asking for
            it is an error (a lowercasing normalizer would be dropped when the folder is loaded).
        mask_lstrip: The mask token takes the space before it, as in the family's pretrained tokenizers
            (``the <mask>.`` masks the word ``Ġking``/``▁king``, space included, which is what it was trained on).
        class_kwargs: More keyword arguments of the tokenizer class.
    """

    kind: TokenizerKind
    tokenizer_class: str
    specials: dict[str, str]
    cls_sep: tuple[str, str] = ("cls", "sep")
    pipeline_class: str | None = None
    lowercase: bool | None = None
    mask_lstrip: bool = False
    class_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """Everything this package knows about one masked-LM family.

    Attributes:
        name: The family's ``model_type``.
        head: The modules that turn the encoder's last hidden state into vocabulary logits, applied in order. Each
            is position-wise, so running them on the masked rows only gives exactly the logits the model's own
            forward gives there (tests check loss and gradients family by family). Empty: no masked-only head.
        no_head: Why the family has no masked-only head (it gets full logits); empty where it has one.
        head_switch: The config flag that changes the head: ``legacy`` (DeBERTa: ``legacy=False`` projects through
            ``lm_predictions`` on the word embeddings), ``asm`` (XLM: an adaptive softmax has no per-token logits).
        attention_mask: Whether the encoder takes an attention mask (FNet mixes tokens by Fourier transform,
            padding included, and takes none).
        config_names: Our architecture settings -> the family's config names (BERT's by default). A name the
            family's config does not declare is reported and not set.
        attention_dropout_names: Config names of the dropout on attention probabilities (the ones a config has
            are set by ``model.attention_dropout``).
        from_scratch_defaults: What a new model of the family needs beyond our settings to run at all.
        undeclared_config_fields: Config fields the family's modeling code reads (``getattr(config, name,
            default)``) that its config class does not declare, with their JSON type: ``config_overrides`` may set
            them (DeBERTa-v3's relative attention needs them).
        no_from_scratch: Why a new model cannot be built from our settings (one line instead of a broken model);
            empty where it can.
        positions_after_padding: For families whose position ids start after the padding index (fairseq's
            ``make_positions``: a row of n tokens takes positions padding_idx+1 .. padding_idx+n), where that index
            comes from: a config key, or a fixed index. ``None``: positions start at 0.
        tokenizer: The tokenizer ``train-tokenizer --family NAME`` trains; ``None``: the command has none.
        fsdp_layers: Class names of the FSDP units, for a model class whose ``_no_split_modules`` names none
            (:mod:`mlm_lightning.model.sharding`). Empty: the model's own list, else its layer stack.
    """

    name: str
    head: tuple[str, ...] = ()
    no_head: str = ""
    head_switch: Literal["", "legacy", "asm"] = ""
    attention_mask: bool = True
    config_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: dict(BERT_NAMES))
    attention_dropout_names: tuple[str, ...] = ATTENTION_DROPOUT_NAMES
    from_scratch_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    undeclared_config_fields: dict[str, type] = dataclasses.field(default_factory=dict)
    no_from_scratch: str = ""
    positions_after_padding: str | int | None = None
    tokenizer: TokenizerRecipe | None = None
    fsdp_layers: tuple[str, ...] = ()

    @property
    def word_marker(self) -> tuple[str, bool] | None:
        """How the family's own tokenizer marks words (:data:`WORD_MARKERS`); ``None`` without a recipe."""
        return WORD_MARKERS[self.tokenizer.kind] if self.tokenizer else None


def _names(**changes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """BERT's config names with a family's ``changes``."""
    return {**BERT_NAMES, **changes}


_CLS, _LM_HEAD, _PAD = ("cls",), ("lm_head",), "pad_token_id"
_BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_FAIRSEQ_SPECIALS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}
_WORDPIECE = TokenizerRecipe("WordPiece", "BertTokenizer", _BERT_SPECIALS, lowercase=True)
_BART_NAMES = _names(
    hidden_size=("d_model",),
    num_hidden_layers=("encoder_layers", "decoder_layers"),
    num_attention_heads=("encoder_attention_heads", "decoder_attention_heads"),
    intermediate_size=("encoder_ffn_dim", "decoder_ffn_dim"),
    dropout=("dropout", "attention_dropout"),
)
_BART_NO_HEAD = "an encoder-decoder: its logits come from the decoder, run on the shifted input"
_XLM_NAMES = _names(
    hidden_size=("emb_dim",),
    num_hidden_layers=("n_layers",),
    num_attention_heads=("n_heads",),
    dropout=("dropout", "attention_dropout"),
)
_VLM = "a vision-language model: its text-only MLM head is not tested here"
_VLM_SCRATCH = "is a vision-language model with nested configs"
_DEBERTA_V2_FIELDS = {
    "share_att_key": bool,
    "norm_rel_ebd": str,  # "layer_norm" in DeBERTa-v3
    "position_buckets": int,
    "attention_head_size": int,
    "conv_kernel_size": int,
    "conv_groups": int,
    "conv_act": str,
}

# One record per family ``transformers`` ships in ``MODEL_FOR_MASKED_LM_MAPPING_NAMES`` (a test keeps it so).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("albert", head=("predictions",), fsdp_layers=("AlbertLayerGroup",)),
        Family("bart", no_head=_BART_NO_HEAD, config_names=_BART_NAMES),
        Family("bert", head=_CLS, tokenizer=_WORDPIECE),
        Family("big_bird", head=_CLS),
        Family("camembert", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("convbert", head=("generator_predictions", "generator_lm_head")),
        Family("data2vec-text", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("deberta", head=_CLS, head_switch="legacy", undeclared_config_fields={"talking_head": bool}),
        Family(
            "deberta-v2",
            head=_CLS,
            head_switch="legacy",
            undeclared_config_fields=_DEBERTA_V2_FIELDS,
            # DeBERTa-v3: SentencePiece with BERT's special tokens, cased.
            tokenizer=TokenizerRecipe(
                "SentencePiece",
                "DebertaV2Tokenizer",
                {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
                lowercase=False,
                class_kwargs={"bos_token": "[CLS]", "eos_token": "[SEP]"},
            ),
            fsdp_layers=("DebertaV2Layer",),
        ),
        Family(
            "distilbert",
            head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
            config_names=_names(
                hidden_size=("dim",),
                num_hidden_layers=("n_layers",),
                num_attention_heads=("n_heads",),
                intermediate_size=("hidden_dim",),
                dropout=("dropout", "attention_dropout"),
            ),
            tokenizer=TokenizerRecipe("WordPiece", "DistilBertTokenizer", _BERT_SPECIALS, lowercase=True),
            fsdp_layers=("TransformerBlock",),
        ),
        # transformers' own ELECTRA tokenizer is BERT's.
        Family(
            "electra",
            head=("generator_predictions", "generator_lm_head"),
            tokenizer=_WORDPIECE,
            fsdp_layers=("ElectraLayer",),
        ),
        Family("ernie", head=_CLS),
        # With absolute position embeddings; rotary ones have no table to run past.
        Family("esm", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("esmc", head=_LM_HEAD, config_names=_names(dropout=("attention_dropout",))),
        Family("eurobert", head=_LM_HEAD, config_names=_names(dropout=("attention_dropout",))),
        Family("flaubert", head=("pred_layer.proj",), head_switch="asm", config_names=_XLM_NAMES),
        Family("fnet", head=_CLS, attention_mask=False, config_names=_names(dropout=("hidden_dropout_prob",))),
        Family(
            "funnel",
            head=_LM_HEAD,
            no_from_scratch="sets its depth by block_sizes (pooling blocks), not num_hidden_layers",
        ),
        Family("gte", head=_LM_HEAD),
        Family("ibert", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("jina_embeddings_v3", head=_LM_HEAD),
        Family("layoutlm", head=_CLS),
        Family("longformer", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("luke", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("mbart", no_head=_BART_NO_HEAD, config_names=_BART_NAMES),
        Family("megatron-bert", head=_CLS),
        Family("mobilebert", head=_CLS),
        Family(
            "modernbert",
            head=("head", "decoder"),  # final norm is inside ModernBertModel; sparse_prediction is this very path
            config_names=_names(dropout=("attention_dropout", "embedding_dropout", "mlp_dropout")),
            # Its pretrained tokenizer: byte-level BPE (OLMo's) with BERT's special tokens and [CLS] ... [SEP].
            tokenizer=TokenizerRecipe(
                "byte-level BPE",
                "PreTrainedTokenizerFast",
                _BERT_SPECIALS,
                pipeline_class="RobertaTokenizer",
                mask_lstrip=True,
            ),
        ),
        Family("modernvbert", no_head=_VLM, no_from_scratch=_VLM_SCRATCH),
        Family("mpnet", head=_LM_HEAD, positions_after_padding=1),  # MPNet's padding index is always 1
        Family("mra", head=_CLS),
        Family("mvp", no_head=_BART_NO_HEAD, config_names=_BART_NAMES),
        Family("neomme", no_head=_VLM, no_from_scratch=_VLM_SCRATCH),
        Family("nomic_bert", head=_CLS),
        Family("nystromformer", head=_CLS),
        Family(
            "perceiver",
            no_head="its logits come from a cross-attention decoder over a fixed set of max_position_embeddings "
            "queries",
            no_from_scratch="sizes itself by d_model, num_blocks and d_latents",
        ),
        Family(
            "reformer",
            head=_LM_HEAD,
            no_from_scratch="needs axial_pos_shape and attn_layers that match the sequence length",
        ),
        Family(
            "rembert", head=_CLS, config_names=_names(embedding_size=("input_embedding_size", "output_embedding_size"))
        ),
        Family(
            "roberta",
            head=_LM_HEAD,
            positions_after_padding=_PAD,
            tokenizer=TokenizerRecipe(
                "byte-level BPE", "RobertaTokenizer", _FAIRSEQ_SPECIALS, ("bos", "eos"), mask_lstrip=True
            ),
        ),
        Family("roberta-prelayernorm", head=_LM_HEAD, positions_after_padding=_PAD),
        Family("roc_bert", head=_CLS),
        Family("roformer", head=_CLS),
        Family("squeezebert", head=_CLS),
        Family("tapas", head=_CLS),
        Family("ultrabert", head=("head", "decoder"), config_names=_names(dropout=("attention_dropout",))),
        Family("ultravbert", no_head=_VLM, no_from_scratch=_VLM_SCRATCH),
        Family("xlm", head=("pred_layer.proj",), head_switch="asm", config_names=_XLM_NAMES),
        Family(
            "xlm-roberta",
            head=_LM_HEAD,
            positions_after_padding=_PAD,
            tokenizer=TokenizerRecipe(
                "SentencePiece", "XLMRobertaTokenizer", _FAIRSEQ_SPECIALS, ("bos", "eos"), mask_lstrip=True
            ),
        ),
        Family("xlm-roberta-xl", head=_LM_HEAD, positions_after_padding=_PAD),
        # Its one default language adapter (else every forward raises).
        Family(
            "xmod", head=_LM_HEAD, positions_after_padding=_PAD, from_scratch_defaults={"default_language": "en_XX"}
        ),
        Family("yoso", head=_CLS),
    ]
}


def family(model_type: str | None) -> Family:
    """The record of ``model_type``; a family without one gets the defaults (BERT's names, no masked-only head)."""
    return FAMILIES.get(str(model_type)) or Family(str(model_type))


def masked_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | str:
    """The function mapping hidden states (rows, hidden) to vocabulary logits, or why the family has none.

    Modules are looked up on every call, so a resized vocabulary (``resize_token_embeddings``) is picked up.
    """
    hf: Any = model  # a Hugging Face masked LM: its config fields and submodules vary by family
    record = family(hf.config.model_type)
    if record.head_switch == "legacy" and not hf.config.legacy:
        return lambda hidden: hf.lm_predictions(hidden, hf.deberta.embeddings.word_embeddings)
    if record.head_switch == "asm" and hf.config.asm:
        return "its adaptive softmax (asm=True) gives no per-token logits"
    if record.no_head:
        return record.no_head
    if not record.head:
        return "it is not a family this tool knows the MLM head of"
    names = record.head

    def head(hidden: torch.Tensor) -> torch.Tensor:
        for name in names:
            hidden = model.get_submodule(name)(hidden)
        return hidden

    return head


def encoder_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments for the model's (or its encoder's) forward."""
    config: Any = model.config  # a Hugging Face config
    if not family(config.model_type).attention_mask:
        return {"input_ids": input_ids}
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def max_sequence_length(config: Mapping[str, Any]) -> int:
    """Longest row, in tokens, that a model's position embeddings take (0 when unknown).

    ``max_position_embeddings``, less the positions reserved where position ids start after the padding index
    (``Family.positions_after_padding``; RoBERTa, XLM-R: 514 - pad_token_id 1 - 1 = 512).

    Args:
        config: A model configuration as a mapping (``PretrainedConfig.to_dict()``, or the ``model`` section of
            the command line: ``model_type``, ``max_position_embeddings``, ``pad_token_id``).
    """
    positions = int(config.get("max_position_embeddings") or 0)
    padding = family(config.get("model_type")).positions_after_padding
    if not positions or padding is None or config.get("position_embedding_type", "absolute") != "absolute":
        return positions
    padding_idx = config.get(padding) if isinstance(padding, str) else padding
    return max(0, positions - int(padding_idx or 0) - 1)

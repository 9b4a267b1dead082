"""Does a tokenizer belong to a pretrained masked LM? One rule for every family, checked when the model is loaded.

A tokenizer of another model trains silently on the wrong ids (BERT's WordPiece ids into a RoBERTa, the original
tokenizer into an ``extend-vocab`` output that has learnt rows for new words) unless it has more tokens than the
embeddings. The rule, from the most to the least certain evidence:

1. The model's folder ships a tokenizer (``save_pretrained``, ``export``, ``extend-vocab`` all write one): the
   configured tokenizer must have the same vocabulary and special tokens, or it is an error.
2. The model's config records special-token ids (``family_config.TOKEN_ROLES``): a different padding or mask id is an
   error (the padding index sets RoBERTa's position ids; the mask id is what the model learnt to fill in); a
   different cls/sep/bos/eos id is one warning (configs of some hub models carry defaults nobody set). When the
   tokenizer is the one in the model's own folder, any difference is one warning: the model's own files
   disagree, and refusing would leave no way to train it.
3. More tokens than embedding rows is an error (``module.build_model``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning import family_config
from mlm_lightning.data.tokenizer import bundled_tokenizer, load_tokenizer, same_source
from mlm_lightning.errors import MLMError

# Ids that a model cannot do without: another value means another tokenizer.
DECISIVE = ("pad_token_id", "mask_token_id")


def vocabulary_difference(own: Any, given: Any) -> str | None:
    """How tokenizer ``given`` differs from ``own`` (size, special ids, vocabulary) in words; ``None``: it does not."""
    if len(own) != len(given):
        return f"has {len(own)} tokens, data.tokenizer {len(given)}"
    own_ids, given_ids = family_config.special_token_ids(own), family_config.special_token_ids(given)
    for field in sorted(set(own_ids) | set(given_ids)):
        if own_ids.get(field) != given_ids.get(field):
            return f"has {field} {own_ids.get(field)}, data.tokenizer {given_ids.get(field)}"
    own_vocab, given_vocab = own.get_vocab(), given.get_vocab()
    if own_vocab != given_vocab:
        token = min(set(own_vocab.items()) ^ set(given_vocab.items()), key=lambda item: item[1])[0]
        return f"gives {token!r} the id {own_vocab.get(token)}, data.tokenizer {given_vocab.get(token)}"
    return None


def check_tokenizer_matches(
    model_name_or_path: str,
    config: Any,
    tokenizer_name_or_path: str | None,
    token_ids: Mapping[str, int] | None,
) -> None:
    """Raises :class:`MLMError` (or warns once) when the tokenizer does not belong to the pretrained model.

    Args:
        model_name_or_path: The pretrained model, as configured (``model.model_name_or_path``).
        config: Its loaded configuration.
        tokenizer_name_or_path: The configured tokenizer (``data.tokenizer``); ``None`` skips rule 1.
        token_ids: The tokenizer's special-token ids (:func:`family_config.special_token_ids`); ``None`` skips rule 2.
    """
    model = model_name_or_path
    own_folder = bool(tokenizer_name_or_path and same_source(model, tokenizer_name_or_path))
    if tokenizer_name_or_path and not own_folder:
        own = bundled_tokenizer(model)
        if own is not None:
            difference = vocabulary_difference(own, load_tokenizer(tokenizer_name_or_path))
            if difference:
                raise MLMError(
                    f"data.tokenizer={tokenizer_name_or_path} is not the tokenizer of model '{model}': the tokenizer "
                    f"saved with the model {difference}. Leave data.tokenizer unset to use the model's own"
                )
    if token_ids is None:
        return
    decisive: list[str] = []
    doubtful: list[str] = []
    for role in family_config.TOKEN_ROLES:
        field = f"{role}_token_id"
        recorded, given = getattr(config, field, None), family_config.token_id_for(field, token_ids)
        if isinstance(recorded, int) and given is not None and recorded != given:
            (decisive if field in DECISIVE else doubtful).append(f"{field} {recorded} (tokenizer: {given})")
    if decisive and own_folder:  # the model's own files disagree with each other: its author's to fix
        rank_zero_warn(
            f"model '{model}': its config has {', '.join(decisive + doubtful)}, its own tokenizer says otherwise; "
            f"masking and padding use the tokenizer's ids"
        )
    elif decisive:
        raise MLMError(
            f"data.tokenizer={tokenizer_name_or_path} does not belong to model '{model}': its config has "
            f"{', '.join(decisive + doubtful)}. Use the model's own tokenizer (leave data.tokenizer unset)"
        )
    elif doubtful:
        rank_zero_warn(
            f"the config of model '{model}' has {', '.join(doubtful)}: if data.tokenizer={tokenizer_name_or_path} "
            f"is not this model's own tokenizer, the model trains on ids it never learnt"
        )

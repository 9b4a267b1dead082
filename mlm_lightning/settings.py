"""Range-checked types for settings, so that a bad value stops the command line while it parses the config.

jsonargparse checks these when it reads a value (``--data.batch_size 0`` fails before anything is built or
written) and shows their names in ``--help``. The common ones come from ``jsonargparse.typing``
(``PositiveInt``, ``NonNegativeInt``, ``NonNegativeFloat``, ``ClosedUnitInterval``, ...); the ones below add the
ranges it lacks. Parsed values are instances of these ``int``/``float`` subclasses: the command line passes them
through :func:`plain_values` when it builds the classes, so checkpoints hold plain numbers only (``torch.load``
with ``weights_only=True`` refuses other types).
"""

from __future__ import annotations

from typing import Any

try:
    from jsonargparse.typing import (
        ClosedUnitInterval,
        NonNegativeFloat,
        NonNegativeInt,
        OpenUnitInterval,
        PositiveFloat,
        PositiveInt,
        restricted_number_type,
    )
except ImportError:  # the module and collator also run without the command line (e.g. benchmarks/gpu.py on a GPU box)
    ClosedUnitInterval = OpenUnitInterval = NonNegativeFloat = PositiveFloat = float  # type: ignore[misc]
    NonNegativeInt = PositiveInt = int  # type: ignore[misc]

    def restricted_number_type(name: str, base: type, restrictions: Any) -> type:  # type: ignore[misc]
        return base


__all__ = [
    "ClosedUnitInterval",
    "NonNegativeFloat",
    "NonNegativeInt",
    "NonZeroProbability",
    "OpenUnitInterval",
    "PositiveFloat",
    "PositiveInt",
    "SequenceLength",
    "ShareBelowOne",
    "plain_values",
]

#: A probability that must not be 0: (0, 1].
NonZeroProbability = restricted_number_type("NonZeroProbability", float, [(">", 0), ("<=", 1)])
#: A share below 1: [0, 1) (dropout, AdamW betas).
ShareBelowOne = restricted_number_type("ShareBelowOne", float, [(">=", 0), ("<", 1)])
#: Tokens per row: at least 8 ([CLS], [SEP] and a few tokens to mask).
SequenceLength = restricted_number_type("SequenceLength", int, (">=", 8))


def plain_values(value: Any) -> Any:
    """``value`` with every ``int``/``float`` subclass instance (the types above) replaced by a plain number."""
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        for key, item in list(value.items()):  # dotted keys of the leaves, nested namespaces included
            value[key] = plain_values(item)
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and type(value) is not int:
        return int(value)
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain_values(v) for v in value)
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    return value

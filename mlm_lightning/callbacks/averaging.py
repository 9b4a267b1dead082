"""Weight averaging (EMA) as a settings section: Lightning's own callback with typed, checked settings."""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging

from mlm_lightning.settings import NonNegativeInt, OpenUnitInterval, PositiveInt


class WeightAveragingSetting(EMAWeightAveraging):
    """An exponential moving average of the weights (Lightning's ``EMAWeightAveraging``), as a setting.

    Lightning's callback, unchanged, behind an on/off switch (the command line leaves it out of the run when
    ``enabled`` is false): after each optimizer step the average moves towards the weights by ``1 - decay``;
    validation, the checkpoints (hence ``export``) and the model at the end of ``fit`` use the average. Not with
    a sharded strategy (FSDP, DeepSpeed): Lightning's callback does not support one.

    Args:
        enabled: Keep an exponential moving average of the weights.
        decay: The average's decay per update (0.999: about the last 1,000 updates weigh in).
        update_every_n_steps: Update the average every this many optimizer steps.
        update_starting_at_step: First step to average from; ``None``: from the start.
    """

    def __init__(
        self,
        enabled: bool = False,
        decay: OpenUnitInterval = 0.999,
        update_every_n_steps: PositiveInt = 1,
        update_starting_at_step: NonNegativeInt | None = None,
    ) -> None:
        super().__init__(
            decay=decay, update_every_n_steps=update_every_n_steps, update_starting_at_step=update_starting_at_step
        )
        self.enabled = enabled
        self.decay = decay  # Lightning keeps it inside its averaging function only

"""Lightning callbacks: each job a run does beside the training step, one module per job.

* :mod:`.checkpoint`: ``MLMCheckpoint`` (never a non-finite save; the last finite checkpoint);
* :mod:`.nonfinite`: the stop on a non-finite loss; :mod:`.random_states`: random states in checkpoints;
* :mod:`.console`: progress lines and bars; :mod:`.memory`: the allocator's settings and trims;
* :mod:`.story`: corpus report, fill-mask probes, hparams with results, export at the end of fit;
* :mod:`.validation`: the base model's figures at step 0, the final validation, the step axis;
* :mod:`.dashboard`: TensorBoard's Custom Scalars layout; :mod:`.averaging`: weight averaging (EMA);
* :mod:`.probe`: the downstream probe at the end of fit; :mod:`.throughput`: ``train/tokens_per_sec`` and MFU.
"""

from __future__ import annotations

from mlm_lightning.callbacks.averaging import WeightAveragingSetting
from mlm_lightning.callbacks.dashboard import DashboardLayout
from mlm_lightning.callbacks.story import CorpusReport, ExportOnFitEnd, FillMaskProbes, HParamsSummary
from mlm_lightning.callbacks.validation import FinalValidation, GlobalStepAxis, ValidateBeforeFit

__all__ = [
    "CorpusReport",
    "DashboardLayout",
    "ExportOnFitEnd",
    "FillMaskProbes",
    "FinalValidation",
    "GlobalStepAxis",
    "HParamsSummary",
    "ValidateBeforeFit",
    "WeightAveragingSetting",
]

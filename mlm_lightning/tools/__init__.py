"""What a user does with a model around a run, as functions: export, fill-mask, evaluate, probe, report,
train-tokenizer, extend-vocab. Their command lines are in :mod:`mlm_lightning.cli` (tools never import it)."""

"""The arithmetic of a training run that is not the network: precision, FLOPs and MFU, the learning-rate schedule,
the optimizer's parameter groups, metrics."""

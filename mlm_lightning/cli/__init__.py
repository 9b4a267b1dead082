"""The command line: the LightningCLI of ``fit``/``validate``/``test``/``predict`` (:mod:`.lightning_cli`) and the
command lines of the tools that read a fit configuration (``evaluate``, ``probe``, ``inspect``, ``shard``)."""

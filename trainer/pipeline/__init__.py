"""The Nano-B training pipeline (DESIGN §3): distill -> B-FPGM prune -> fine-tune -> export.

- :mod:`~trainer.pipeline.recipe`: the TOML config (``trainer/configs/nano_b_{cpu,gpu}.toml``)
- :mod:`~trainer.pipeline.data`: the event split of WIDER, the other sources, the batch stream
- :mod:`~trainer.pipeline.loop`: the KD step function, validation, BN recalibration
- :mod:`~trainer.pipeline.train`: the resumable training loop every phase uses
- :mod:`~trainer.pipeline.phases`: the three phases and the export
- :mod:`~trainer.pipeline.run`: all of it in order (``featherface-train nano-b``)
"""

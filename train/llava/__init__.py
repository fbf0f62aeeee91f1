"""LLaVA's recipe on real checkpoints.

``data`` (LLaVA JSON -> tokenised samples with the loss mask), ``config`` (one
``StageConfig`` per stage, named presets), ``optim`` (what trains, optimiser, schedule),
``trainer`` (one stage on accelerate, under torchrun), ``assemble`` (vision tower + LLM +
a fresh projector), ``export`` (a servable llava-hf checkpoint).
"""

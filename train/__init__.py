"""Training package (stage 1 alignment, stage 2 instruction tuning, data, evaluation).

So far: ``train.world``, the synthetic visual world with exact ground truth that the
built-in default model will be trained and scored on.
"""

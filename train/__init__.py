"""Training package (stage 1 alignment, stage 2 instruction tuning). Not built yet."""

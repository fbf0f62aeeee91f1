"""Training package: LLaVA's two stages, the data they eat, and the built-in default model.

- ``llava/``: the recipe on real checkpoints (LLaVA JSON data, stage configs, optimiser,
  the stage trainer on accelerate under torchrun, assembly, llava-hf export).
- ``builtin/``: the synthetic world and the built-in model grown from nothing on it
  (world, symbolic, template teacher, world data, pretraining, recipe, shapes-bench).
- ``datagen/``: instruction data from a teacher (an OpenAI-compatible LLM or the template).
- ``eval/``: judge-scored relative score, ScienceQA, shapes-bench as a harness task.
- ``cli``, ``bench_cli``: ``llava-train``.
"""

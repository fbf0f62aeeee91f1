"""Training package: LLaVA's two stages, the data they eat, and the built-in default model.

- ``data``, ``config``, ``optim``, ``engine``, ``assemble``, ``export``: the recipe on real
  checkpoints (LLaVA JSON, stage 1 / stage 2 on accelerate under torchrun, llava-hf export).
- ``world``, ``symbolic``, ``template_teacher``, ``world_data``, ``pretrain``, ``recipe``:
  the synthetic world and the built-in model grown from nothing on it.
- ``datagen``: instruction data from a teacher (an OpenAI-compatible LLM or the template).
- ``eval``, ``shapes_bench``: judge-scored relative score, ScienceQA, shapes-bench.
- ``cli``: ``llava-train``.
"""

"""The built-in default model, grown from nothing on a synthetic world.

``world`` (scenes of coloured shapes and questions about them), ``symbolic`` (a scene as
objects and relations), ``template_teacher`` (conversations written from that context),
``world_data`` (scenes -> LLaVA JSON), ``pretrain`` (tokenizer, CLIP and LM from scratch),
``recipe`` (every step, resumable), ``shapes_bench`` (exact-answer benchmark on held-out
scenes).
"""

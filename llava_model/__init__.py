"""Our LLaVA model for vLLM, loaded through vLLM's ``vllm.general_plugins`` entry point.

Importing this package has no side effects; vLLM calls ``register`` in every
process it starts. Set ``VLLM_PLUGINS`` to a list without ``llava_model`` (for
example ``VLLM_PLUGINS=``) to fall back to vLLM's built-in LLaVA class.
"""

ARCHITECTURE = "LlavaForConditionalGeneration"
NEXT_ARCHITECTURE = "LlavaNextForConditionalGeneration"  # LLaVA-NeXT / 1.6 (anyres)
ARCHITECTURES = (ARCHITECTURE, NEXT_ARCHITECTURE)


def register() -> None:
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    from kernels.llvmlite_guard import guard
    from llava_model.parent_watch import watch_if_started_by_server

    ModelRegistry.register_model(ARCHITECTURE, "llava_model.model:LlavaForConditionalGeneration")
    ModelRegistry.register_model(NEXT_ARCHITECTURE, "llava_model.next_model:LlavaNextForConditionalGeneration")
    if current_platform.is_cpu():
        from kernels.cpu_int8 import install

        install()  # exact W8A8 int8 layers where this CPU's int8 GEMM saturates
    watch_if_started_by_server()  # a spawned engine core ends with the server that started it
    guard()  # vLLM scans every module right after the plugins load: see kernels.llvmlite_guard

"""Shared test setup: in-process vLLM engines over tiny models built in code.

The engine runs in the test process (no engine-core subprocess), which starts in
seconds and lets load errors surface as ordinary exceptions.
"""

import gc
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def make_llm(model_dir, **overrides):
    from vllm import LLM

    options = dict(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=8,
        seed=0,
        limit_mm_per_prompt={"image": 3},
        distributed_executor_backend="uni",
    )
    options.update(overrides)
    return LLM(**options)


def close_llm(llm) -> None:
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    destroy_model_parallel()
    destroy_distributed_environment()


@pytest.fixture
def engine_factory():
    """Build engines inside a test; all are shut down when it ends."""
    made = []

    def factory(model_dir, **overrides):
        llm = make_llm(model_dir, **overrides)
        made.append(llm)
        return llm

    yield factory
    while made:
        close_llm(made.pop())

"""Training configurations as dataclasses, and the named presets ``llava-train`` offers.

A preset fills a ``StageConfig``; flags given on the command line override its fields.
The LLaVA-1.5 presets carry the paper's recipe (global batch 256 / 128, lr 1e-3 /
2e-5, one epoch, cosine with 3 % warm-up); ``default-*`` and ``ci-*`` are the built-in
model's stages on the synthetic world.
"""

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class StageConfig:
    stage: int = 1  # 1: projector only; 2: projector + LLM (vision frozen)
    model: str = ""  # a LLaVA checkpoint dir (assembled, or the previous stage's export)
    data: str = ""  # LLaVA JSON
    image_root: str = ""
    output_dir: str = ""
    chat_format: str = "plain"  # plain for stage 1, vicuna_v1 for stage 2 (see llava_model.chat_format)
    epochs: float = 1.0
    max_steps: int = 0  # 0: as many as the epochs give
    global_batch: int = 256  # samples per optimiser step, over all processes and accumulation
    per_device_batch: int = 16
    lr: float = 1e-3
    projector_lr: float = 0.0  # 0: same as lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_length: int = 2048
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora_r: int = 0  # > 0: train the LLM through LoRA adapters of this rank (stage 2)
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    fsdp: bool = False  # shard parameters, gradients and optimiser state over the processes
    seed: int = 0
    save_every: int = 0  # optimiser steps between resumable checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    num_workers: int = 0  # DataLoader workers decoding images
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.lora_r and self.stage == 1:
            raise ValueError("LoRA trains the LLM, which stage 1 keeps frozen; use it in stage 2")
        if self.global_batch % self.per_device_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of per_device_batch "
                             f"{self.per_device_batch}")


LLAVA15_STAGE1 = StageConfig(stage=1, chat_format="plain", global_batch=256, per_device_batch=32, lr=1e-3,
                             max_length=2048, bf16=True)
LLAVA15_STAGE2 = StageConfig(stage=2, chat_format="vicuna_v1", global_batch=128, per_device_batch=16, lr=2e-5,
                             max_length=2048, bf16=True, gradient_checkpointing=True)
LLAVA15_STAGE2_LORA = replace(LLAVA15_STAGE2, lora_r=128, lora_alpha=256, lr=2e-4, projector_lr=2e-5)

PRESETS: dict[str, StageConfig] = {
    "llava15-stage1": LLAVA15_STAGE1,
    "llava15-stage2": LLAVA15_STAGE2,
    "llava15-stage2-lora": LLAVA15_STAGE2_LORA,
}


def with_overrides(base: StageConfig, **overrides) -> StageConfig:
    """``base`` with the given fields replaced (``None`` values are ignored)."""
    known = {f.name for f in fields(StageConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})

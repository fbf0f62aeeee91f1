"""What trains in each stage, the optimiser's parameter groups, and the LR schedule."""

import math

import torch

from train.llava.config import StageConfig

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def prepare_trainable(model, cfg: StageConfig):
    """Freeze per LLaVA's recipe; wrap the LLM in LoRA adapters when asked. Returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=LORA_TARGETS, bias="none",
        ))
    elif cfg.stage == 2:
        for p in _inner(model).language_model.parameters():
            p.requires_grad_(True)
        for p in _lm_head(model).parameters():
            p.requires_grad_(True)
    for p in _inner(model).multi_modal_projector.parameters():
        p.requires_grad_(True)  # both stages (with LoRA too: the projector trains in full)
    return model


def _inner(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _lm_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.lm_head


def trainable_summary(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def build_optimizer(model, cfg: StageConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; the projector may have its own LR."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.projector_lr if cfg.projector_lr and "multi_modal_projector" in name else cfg.lr
        decay = 0.0 if p.ndim < 2 else cfg.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()], betas=(0.9, 0.999)
    )


def cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

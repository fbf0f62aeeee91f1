"""One LLaVA training stage on accelerate, launched alone or under ``torchrun``.

Why accelerate and not the HF Trainer: LLaVA's recipe needs its own loss (summed
over assistant tokens and divided by the tokens of the whole global batch, so 1, 2 or
N processes and any accumulation give the same gradient), its own per-stage freezing
and its own data order; accelerate adds exactly the distributed parts (DDP or FSDP
under torchrun, bf16 autocast, sharded checkpoints, gathering for export) and leaves
the loop readable in one screen.

Data order is a seeded permutation per epoch cut into global batches; each process
takes its slice of each micro-batch, so the set of samples in optimiser step k is the
same whatever the number of processes. Checkpoints (``checkpoint-<step>``) are
written beside their final name and renamed into place; a rerun resumes from the
latest one.
"""

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from train.llava.config import StageConfig
from train.llava.data import IGNORE, LlavaDataset, collate, load_samples
from train.llava.optim import build_optimizer, cosine_with_warmup, prepare_trainable, trainable_summary

MAX_MISMATCH_RATIO = 0.01


def _accelerator(cfg: StageConfig, force_cpu: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = None
    if cfg.fsdp:
        if cfg.lora_r:
            raise ValueError("LoRA with FSDP is not supported here; use DDP for LoRA runs")
        if not torch.cuda.is_available():
            raise ValueError("accelerate shards with FSDP only on GPUs; on CPU run DDP (drop --fsdp)")
        fsdp = FullyShardedDataParallelPlugin(use_orig_params=True, sync_module_states=False)
    # One process may train several stages with different settings (the recipe does, tests do);
    # accelerate keeps its state per process, so start each stage from a clean one (the
    # process group, if any, is kept).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # cpu=True is what makes accelerate pick gloo for a torchrun launch on a machine without GPUs.
    return Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", fsdp_plugin=fsdp,
                       cpu=force_cpu or not torch.cuda.is_available())


def slow_bf16_warning(rate=None) -> str | None:
    """A warning when this CPU runs bf16 products slower than fp32 (no AVX-512 BF16 or AMX:
    one of ours, AVX2 only, ran them at 16 GFLOP/s against fp32's 128), where ``--bf16`` makes training
    slower, not faster; ``None`` otherwise. ``rate(dtype)``: measured GFLOP/s."""
    from kernels.ceiling import bf16_and_fp32

    bf16, fp32 = bf16_and_fp32(rate)
    if bf16 >= fp32:
        return None
    return (f"warning: --bf16 on this CPU: its bf16 products measured at {bf16:.0f} GFLOP/s, fp32 at "
            f"{fp32:.0f}; --no-bf16 trains faster here")


def _rank_batches(n: int, cfg: StageConfig, world: int, rank: int, steps: int, steps_per_epoch: int):
    """Index lists this process feeds, micro-batch by micro-batch, for ``steps`` steps."""
    accum = cfg.global_batch // (cfg.per_device_batch * world)
    pd, gb = cfg.per_device_batch, cfg.global_batch
    out, perm, epoch = [], None, -1
    for step in range(steps):
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        start = (step % steps_per_epoch) * gb
        chunk = perm[start:start + gb]
        for m in range(accum):
            first = (m * world + rank) * pd
            out.append(chunk[first:first + pd])
    return out, accum


def _checkpoints(out: Path) -> list[Path]:
    done = [p for p in out.glob("checkpoint-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save(acc, out: Path, step: int, keep: int, extra: dict) -> None:
    tmp = out / f".checkpoint-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
        final = out / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load(cfg: StageConfig):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from llava_model.hf_projector import projector_type_of, replace_hf_projector

    model = LlavaForConditionalGeneration.from_pretrained(cfg.model, dtype=torch.float32)
    kind = projector_type_of(model.config)
    if kind != "mlp2x_gelu":  # transformers builds the MLP; swap in the module the checkpoint holds
        replace_hf_projector(model, kind)
        _reload_projector(model, cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    return model, tokenizer


def _reload_projector(model, model_dir: str) -> None:
    from safetensors import safe_open

    from llava_model.weights import hub_name

    prefix = "multi_modal_projector."
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        state = {hub_name(k)[len(prefix):]: f.get_tensor(k) for k in f.keys() if hub_name(k).startswith(prefix)}
    model.model.multi_modal_projector.load_state_dict(state)


def _image_config(model_dir: str, image_size: int):
    from llava_model.image_processing import ImageProcessingConfig

    path = Path(model_dir) / "preprocessor_config.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return ImageProcessingConfig.from_hf_dict(raw, image_size=image_size), raw


def train_stage(cfg: StageConfig, export_dir: str | Path | None = None, force_cpu: bool = False) -> dict:
    """Train one stage; export the result to ``export_dir`` (default ``<output_dir>/final``)."""
    from tqdm.auto import tqdm

    from llava_model.prompt_ids import prompt_tokenization
    from llava_model.vision import num_image_tokens

    if not (Path(cfg.model) / "config.json").is_file():
        raise ValueError(f"--model {cfg.model}: no config.json; expected a LLaVA checkpoint (llava-train assemble)")
    acc = _accelerator(cfg, force_cpu)
    if cfg.bf16 and acc.device.type == "cpu" and (warning := slow_bf16_warning()):
        acc.print(warning)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = _load(cfg)
    image_cfg, processor_raw = _image_config(cfg.model, model.config.vision_config.image_size)
    samples = load_samples(cfg.data, cfg.image_root or None)
    # Tokenise prompts as the base model reads them (a converted original-repo checkpoint:
    # chunks around each <image>); the export says the same, so it is served that way.
    tokenization = prompt_tokenization(cfg.model)
    ds = LlavaDataset(samples, tokenizer, cfg.chat_format, num_image_tokens(model.config), cfg.max_length,
                      image_cfg, cfg.image_root or None, tokenization=tokenization)
    _report_mismatches(ds, len(samples), out, acc)

    world, rank = acc.num_processes, acc.process_index
    if cfg.global_batch % (cfg.per_device_batch * world):
        raise ValueError(f"global_batch {cfg.global_batch} is not per_device_batch {cfg.per_device_batch} "
                         f"x {world} processes x an integer accumulation")
    steps_per_epoch = len(ds) // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(ds)} usable samples are fewer than one global batch ({cfg.global_batch})")
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    model = prepare_trainable(model, cfg)
    acc.print(f"stage {cfg.stage}: {trainable_summary(model)}, {len(ds)} samples, {total} steps")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = acc.prepare(model)
    optimizer = acc.prepare(build_optimizer(model, cfg))
    scheduler = cosine_with_warmup(optimizer, total, cfg.warmup_ratio)  # stepped once per optimiser step

    start = 0
    previous = _checkpoints(out)
    if previous:
        acc.load_state(str(previous[-1]))
        state = json.loads((previous[-1] / "state.json").read_text())
        start = state["step"]
        scheduler.load_state_dict(state["scheduler"])
        acc.print(f"resuming from {previous[-1]} (step {start} of {total})")

    batches, accum = _rank_batches(len(ds), cfg, world, rank, total, steps_per_epoch)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=batches[start * accum:], num_workers=cfg.num_workers,
        collate_fn=lambda b: collate(b, tokenizer.pad_token_id),
    )
    it = iter(loader)
    log_path = out / "train_log.jsonl"
    bar = tqdm(total=total, initial=start, desc=f"stage {cfg.stage}", disable=not (cfg.progress and acc.is_main_process))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_value = float("nan")
    for step in range(start, total):
        t0 = time.perf_counter()
        micro = [next(it) for _ in range(accum)]
        local = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
        tokens = acc.reduce(torch.tensor(float(local), device=acc.device), "sum").item()
        step_loss = torch.zeros((), device=acc.device)
        for i, batch in enumerate(micro):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            sync = nullcontext() if i == accum - 1 else acc.no_sync(model)
            with sync, acc.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               pixel_values=batch.get("pixel_values")).logits[:, :-1]
                loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                           batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")
                acc.backward(loss_sum * world / max(tokens, 1.0))
            step_loss += loss_sum.detach()
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = acc.reduce(step_loss, "sum").item() / max(tokens, 1.0)
        rate = cfg.global_batch / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if acc.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
                                    "loss": round(loss_value, 6), "lr": lr,
                                    "samples_per_s": round(rate, 2), "tokens": int(tokens)}) + "\n")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            _save(acc, out, step + 1, cfg.keep_checkpoints, {"scheduler": scheduler.state_dict()})
    bar.close()
    digests = _rank_digests(acc, model)
    result = {"steps": total, "resumed_from_step": start, "final_loss": loss_value, "samples": len(ds),
              "mismatches": ds.mismatches.count,
              "processes": world, "rank_weight_digests": digests}
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights: {digests}")
    _save(acc, out, total, cfg.keep_checkpoints, {"scheduler": scheduler.state_dict()})
    target = Path(export_dir) if export_dir else out / "final"
    _export(acc, model, tokenizer, processor_raw, target, cfg, result, tokenization)
    return result


def _rank_digests(acc, model) -> list[str]:
    """A hash of this process's trainable weights, gathered from every process."""
    import hashlib

    from accelerate.utils import gather_object

    h = hashlib.sha256()
    if acc.distributed_type.name == "FSDP":  # shards differ by design; compare the gathered full weights
        state = acc.get_state_dict(model)
        items = sorted(state.items())
    else:
        items = [(n, p) for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad]
    for name, tensor in items:
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return gather_object([h.hexdigest()[:16]])


def _export(acc, model, tokenizer, processor: dict, target: Path, cfg: StageConfig, result: dict,
            tokenization: str) -> None:
    from train.llava.export import export

    meta = {"stage": cfg.stage, "config": cfg.__dict__, "result": result}
    state = acc.get_state_dict(model) if cfg.fsdp else None  # gathered on every rank's call
    if acc.is_main_process:
        export(acc.unwrap_model(model), tokenizer, processor, target, cfg.chat_format, meta, state_dict=state,
               prompt_tokenization=tokenization)
    acc.wait_for_everyone()


def _report_mismatches(ds: LlavaDataset, n: int, out: Path, acc) -> None:
    report = ds.mismatches
    if acc.is_main_process:
        (out / "data_report.json").write_text(json.dumps(
            {"samples": n, "usable": len(ds), "mismatches": report.count, "examples": report.examples}, indent=1))
    if report.count:
        acc.print(f"WARNING: {report.count} of {n} samples left out (tokenization mismatch or nothing to learn); "
                  f"first: {report.examples[:3]} (all in {out / 'data_report.json'})")
    if report.count > MAX_MISMATCH_RATIO * n:
        raise ValueError(f"{report.count} of {n} samples mismatched (limit {MAX_MISMATCH_RATIO:.0%}): the chat "
                         f"format or tokenizer is likely wrong; see {out / 'data_report.json'}")

"""The built-in default model, from nothing: world data -> tokenizer -> CLIP -> LLM ->
assembled LLaVA -> stage 1 -> stage 2 -> ``models/default``.

Every step writes its output under the work directory and is skipped when that output
is already complete and was made from the same settings (each step records a fingerprint
of its own settings and of the steps it depends on; a changed setting redoes that step
and everything after it), so an interrupted build resumes where it stopped; the final
model is renamed into place only when stage 2 has exported it. Same config, same
seeds, same threads: the same weights.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from train.builtin.pretrain import ClipConfig, LmConfig, lm_texts, train_clip, train_lm, train_tokenizer
from train.builtin.world_data import WorldDataConfig, write_world_data
from train.llava.assemble import AssembleConfig, assemble
from train.llava.config import StageConfig


@dataclass(frozen=True)
class RecipeConfig:
    world: WorldDataConfig = WorldDataConfig()
    vocab_size: int = 1024
    clip: ClipConfig = ClipConfig()
    lm: LmConfig = LmConfig()
    projector_type: str = "mlp2x_gelu"
    stage1: StageConfig = StageConfig(stage=1, chat_format="plain", global_batch=64, per_device_batch=64,
                                      lr=2e-3, max_steps=80, max_length=256, bf16=True)
    stage2: StageConfig = StageConfig(stage=2, chat_format="vicuna_v1", global_batch=32, per_device_batch=32,
                                      lr=1e-3, max_steps=700, max_length=512, warmup_ratio=0.03, bf16=True)
    threads: int = 0  # torch threads (0: leave torch's default)
    progress: bool = True
    extra: dict = field(default_factory=dict)


PRESETS = {
    "default": RecipeConfig(),
    "ci": RecipeConfig(  # the same recipe and sizes, fewer scenes and steps (a few minutes)
        world=WorldDataConfig(scenes=1500),
        clip=ClipConfig(steps=200, batch=64, scenes=1000),
        lm=LmConfig(steps=80),
        stage1=StageConfig(stage=1, chat_format="plain", global_batch=32, per_device_batch=32, lr=2e-3,
                           max_steps=20, max_length=256, bf16=True),
        stage2=StageConfig(stage=2, chat_format="vicuna_v1", global_batch=32, per_device_batch=32, lr=2e-3,
                           max_steps=300, max_length=512, bf16=True),
    ),
}


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(path: Path, fingerprint: str) -> dict | None:
    """What the step at ``path`` recorded, if it completed with these settings."""
    try:
        info = json.loads((path / ".done").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("fingerprint") == fingerprint else None


def _step(name: str, path: Path, log: dict, fn, fingerprint: str) -> str:
    previous = _finished(path, fingerprint)
    if previous is not None:
        log[name] = previous | {"skipped": True}
        return fingerprint
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t0 = time.perf_counter()
    info = fn(path) or {}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["fingerprint"] = fingerprint
    (path / ".done").write_text(json.dumps(info))
    log[name] = info
    print(f"[{name}] done in {info['seconds']} s", flush=True)
    return fingerprint


def _pixels(images: list, image_size: int) -> torch.Tensor:
    """Images through the server's preprocessing, once, kept in bf16 for CLIP training."""
    from llava_model.image_processing import ImageProcessingConfig, preprocess_images

    cfg = ImageProcessingConfig(image_size=image_size, shortest_edge=image_size, aspect_mode="pad")
    return torch.cat([preprocess_images(images[i:i + 256], cfg).to(torch.bfloat16)
                      for i in range(0, len(images), 256)])


def build(out_dir: str | Path, cfg: RecipeConfig = PRESETS["default"], work_dir: str | Path | None = None) -> dict:
    """Build the model into ``out_dir``; returns what each step did (also in ``build_log.json``)."""
    from train.llava.trainer import train_stage

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    log: dict = {"config": asdict(cfg)}
    data = work / "data"

    def world(path: Path) -> dict:
        paths = write_world_data(path, cfg.world)
        return {k: str(v) for k, v in paths.items()}

    fp_world = _step("world", data, log, world, _fingerprint(cfg.world))
    captions = json.loads((data / "captions.json").read_text())
    instruct = json.loads((data / "instruct.json").read_text())
    texts = lm_texts([s["conversations"] for s in instruct], [s["conversations"][1]["value"] for s in captions])

    def tokenizer_step(path: Path) -> dict:
        tok = train_tokenizer(texts, path, cfg.vocab_size)
        return {"vocab": len(tok)}

    fp_tok = _step("tokenizer", work / "tokenizer", log, tokenizer_step, _fingerprint(fp_world, cfg.vocab_size))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")

    def clip_step(path: Path) -> dict:
        import random

        from train.builtin.world import make_scene, variants

        rng = random.Random(cfg.clip.seed)
        scenes, groups = [], []
        for seed in range(cfg.world.first_seed, cfg.world.first_seed + min(cfg.clip.scenes, cfg.world.scenes)):
            family = [make_scene(seed, cfg.world.world)]
            family += variants(family[0], rng, cfg.clip.reshapes)
            groups.append(list(range(len(scenes), len(scenes) + len(family))))
            scenes += family
        pixels = _pixels([s.render() for s in scenes], cfg.clip.image_size)
        captions = [s.layout_captions() if cfg.clip.captions == "layout" else s.captions() for s in scenes]
        losses = train_clip(pixels, captions, tokenizer, cfg.clip, path, cfg.progress, groups)
        return {"images": len(scenes), "first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:])}

    fp_clip = _step("clip", work / "clip", log, clip_step, _fingerprint(fp_tok, cfg.clip))

    def lm_step(path: Path) -> dict:
        losses = train_lm(texts, tokenizer, cfg.lm, path, cfg.progress)
        return {"first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:])}

    fp_lm = _step("lm", work / "lm", log, lm_step, _fingerprint(fp_tok, cfg.lm))

    def assemble_step(path: Path) -> dict:
        from train.llava.export import export

        model, tok, processor = assemble(AssembleConfig(vision=str(work / "clip"), llm=str(work / "lm"),
                                                        projector_type=cfg.projector_type))
        export(model, tok, processor, path, "plain", {"stage": 0})
        return {}

    fp = _step("assemble", work / "assembled", log, assemble_step, _fingerprint(fp_clip, fp_lm, cfg.projector_type))

    def stage(name: str, stage_cfg: StageConfig, model_dir: Path, data_file: str, upstream: str) -> str:
        def run(path: Path) -> dict:
            full = replace(stage_cfg, model=str(model_dir), data=str(data / data_file), image_root=str(data),
                           output_dir=str(path / "run"), progress=cfg.progress)
            result = train_stage(full, export_dir=path / "model")
            shutil.rmtree(path / "run" / f"checkpoint-{result['steps']}", ignore_errors=True)
            return result
        return _step(name, work / name, log, run, _fingerprint(upstream, stage_cfg))

    fp = stage("stage1", cfg.stage1, work / "assembled", "captions.json", fp)
    stage("stage2", cfg.stage2, work / "stage1" / "model", "instruct.json", fp)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "stage2" / "model", tmp)
    (tmp / "build_log.json").write_text(json.dumps(log, indent=1, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return log

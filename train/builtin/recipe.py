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
from train.builtin.world import VARIED
from train.builtin.world_data import WorldDataConfig, write_world_data
from train.llava.assemble import AssembleConfig, assemble
from train.llava.config import StageConfig

# The shipped model's world: the varied drawing style, long conversations of mostly one-word
# answers, the kinds that need a colour and a shape bound to one object (attribute, exists,
# relation) asked more often, and where each object is (which relation builds on).
DEFAULT_WORLD = WorldDataConfig(
    scenes=40000, detail_odds=0.15, complex_odds=0.15, turns=(8, 12), short_odds=0.85, world=VARIED,
    weights=(("attribute", 3.0), ("exists", 2.0), ("relation", 3.0), ("where", 1.5), ("size", 0.5),
             ("background", 0.5)))
# A vision tower that keeps what sits where and what shape it has. Measured with a linear probe
# on its tokens (held-out scenes, main / varied style): row, column and colour 100 %; shape 98 % /
# 88 % after these 2,000 steps on 10,000 scenes, 72 % / 64 % after 450 on 2,500, which held the
# built-in model's shape, colour and exists answers near 64-77 %; with CLIP's defaults row is at chance.
DEFAULT_CLIP = ClipConfig(position_std=1.0, captions="layout", reshapes=2, lr=5e-4, steps=2000, scenes=10000)


@dataclass(frozen=True)
class RecipeConfig:
    world: WorldDataConfig = DEFAULT_WORLD
    vocab_size: int = 1024
    clip: ClipConfig = DEFAULT_CLIP
    lm: LmConfig = LmConfig(layers=4)  # relation is two look-ups and a comparison: one layer more than 3
    projector_type: str = "mlp2x_gelu"
    stage1: StageConfig = StageConfig(stage=1, chat_format="plain", global_batch=64, per_device_batch=64,
                                      lr=2e-3, max_steps=80, max_length=256, bf16=True)
    stage2: StageConfig = StageConfig(stage=2, chat_format="vicuna_v1", global_batch=32, per_device_batch=32,
                                      lr=1e-3, max_steps=4500, max_length=512, warmup_ratio=0.02, bf16=True,
                                      save_every=250, keep_checkpoints=2)
    threads: int = 0  # torch threads (0: leave torch's default)
    progress: bool = True
    device: str = "cpu"  # cpu | cuda (| cuda:N): where CLIP, the LLM and the stages train; not in any fingerprint
    # auto | bf16 | fp32: whether CLIP, the LLM and the stages autocast their products to bf16 (the
    # steps' own ``bf16`` settings) or run them in fp32. auto keeps the steps' settings on a GPU and on
    # a CPU whose bf16 products measure at least as fast as fp32, else fp32: CPUs without AVX-512 BF16
    # or AMX run bf16 in a slow path (one of ours, AVX2 only: 16 GFLOP/s against fp32's 128). Like
    # ``device``, not in any fingerprint: it changes how the steps run, not what they learn from.
    precision: str = "auto"
    extra: dict = field(default_factory=dict)


PRESETS = {
    "default": RecipeConfig(),
    # The same steps and sizes in a few minutes, for tests: the canonical world and an even mix of
    # question kinds, which a 300-step stage 2 learns to count on (the shipped mix, weighted
    # to the binding kinds and in the varied style, needs thousands of steps to learn anything).
    "ci": RecipeConfig(
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
    started = path / ".started"
    if not (started.is_file() and started.read_text() == fingerprint):
        # Another step's leftovers: start clean. The same step, interrupted, keeps its folder, so a
        # stage resumes from its last checkpoint instead of from nothing.
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        started.write_text(fingerprint)
    t0 = time.perf_counter()
    info = fn(path) or {}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["fingerprint"] = fingerprint
    (path / ".done").write_text(json.dumps(info))
    log[name] = info
    print(f"[{name}] done in {info['seconds']} s", flush=True)
    return fingerprint


def _pixels(scenes: list, image_size: int, chunk: int = 256) -> torch.Tensor:
    """The scenes' pictures through the server's preprocessing, once, kept in bf16 for CLIP
    training. Drawn ``chunk`` at a time: drawing all 44,000 of the default CLIP's pictures before
    preprocessing peaked at 14 GB; in chunks, 6 GB (measured without the training), same pixels."""
    from llava_model.image_processing import ImageProcessingConfig, preprocess_images

    cfg = ImageProcessingConfig(image_size=image_size, shortest_edge=image_size, aspect_mode="pad")
    return torch.cat([preprocess_images([s.render() for s in scenes[i:i + chunk]], cfg).to(torch.bfloat16)
                      for i in range(0, len(scenes), chunk)])


def resolve_precision(cfg: RecipeConfig, rate=None) -> tuple[bool | None, str]:
    """``(bf16, why)``: ``None`` keeps each step's own ``bf16`` setting, ``False`` runs every
    step in fp32, ``True`` autocasts every step to bf16. ``rate(dtype)`` is the measured
    GFLOP/s (``kernels.ceiling`` by default), only asked for ``auto`` on a CPU."""
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision {cfg.precision!r}: expected auto, bf16 or fp32")
    if cfg.precision != "auto":
        return cfg.precision == "bf16", f"precision {cfg.precision}, as asked"
    if not cfg.device.startswith("cpu"):
        return None, f"precision auto on {cfg.device}: each step's own setting"
    from kernels.ceiling import bf16_and_fp32

    bf16, fp32 = bf16_and_fp32(rate)
    keep = bf16 >= fp32
    chosen = "each step's own setting" if keep else "fp32"
    return (None if keep else False), (f"precision auto on this CPU: matmuls measured at bf16 {bf16:.0f}, "
                                       f"fp32 {fp32:.0f} GFLOP/s; {chosen}")


def with_bf16(cfg: RecipeConfig, bf16: bool | None) -> RecipeConfig:
    """``cfg`` with every step's ``bf16`` set to ``bf16`` (unchanged for ``None``)."""
    if bf16 is None:
        return cfg
    return replace(cfg, clip=replace(cfg.clip, bf16=bf16), lm=replace(cfg.lm, bf16=bf16),
                   stage1=replace(cfg.stage1, bf16=bf16), stage2=replace(cfg.stage2, bf16=bf16))


def build(out_dir: str | Path, cfg: RecipeConfig = PRESETS["default"], work_dir: str | Path | None = None) -> dict:
    """Build the model into ``out_dir``; returns what each step did (also in ``build_log.json``)."""
    from train.llava.trainer import train_stage

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: torch sees no CUDA device here")
    if not cfg.device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device {cfg.device!r}: expected cpu or cuda")
    bf16, why = resolve_precision(cfg)
    print(why, flush=True)
    run_cfg = with_bf16(cfg, bf16)  # what the steps run with; fingerprints come from ``cfg``
    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    log: dict = {"config": asdict(cfg), "precision": why}
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
        pixels = _pixels(scenes, cfg.clip.image_size)
        captions = [s.layout_captions() if cfg.clip.captions == "layout" else s.captions() for s in scenes]
        losses = train_clip(pixels, captions, tokenizer, run_cfg.clip, path, cfg.progress, groups, cfg.device)
        return {"images": len(scenes), "first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:])}

    fp_clip = _step("clip", work / "clip", log, clip_step, _fingerprint(fp_tok, cfg.clip))

    def lm_step(path: Path) -> dict:
        losses = train_lm(texts, tokenizer, run_cfg.lm, path, cfg.progress, cfg.device)
        return {"first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:])}

    fp_lm = _step("lm", work / "lm", log, lm_step, _fingerprint(fp_tok, cfg.lm))

    def assemble_step(path: Path) -> dict:
        from train.llava.export import export

        model, tok, processor = assemble(AssembleConfig(vision=str(work / "clip"), llm=str(work / "lm"),
                                                        projector_type=cfg.projector_type))
        export(model, tok, processor, path, "plain", {"stage": 0})
        return {}

    fp = _step("assemble", work / "assembled", log, assemble_step, _fingerprint(fp_clip, fp_lm, cfg.projector_type))

    def stage(name: str, model_dir: Path, data_file: str, upstream: str) -> str:
        """``name`` is the recipe's field: trained as ``run_cfg`` has it, known by ``cfg``'s settings."""
        def run(path: Path) -> dict:
            full = replace(getattr(run_cfg, name), model=str(model_dir), data=str(data / data_file),
                           image_root=str(data), output_dir=str(path / "run"), progress=cfg.progress)
            result = train_stage(full, export_dir=path / "model", force_cpu=not cfg.device.startswith("cuda"))
            shutil.rmtree(path / "run" / f"checkpoint-{result['steps']}", ignore_errors=True)
            return result
        return _step(name, work / name, log, run, _fingerprint(upstream, getattr(cfg, name)))

    fp = stage("stage1", work / "assembled", "captions.json", fp)
    stage("stage2", work / "stage1" / "model", "instruct.json", fp)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "stage2" / "model", tmp)
    log["record"] = build_record(cfg, log, tmp)
    (tmp / "build_log.json").write_text(json.dumps(log, indent=1, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return log


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine() -> dict:
    """What the build ran on: a rebuild elsewhere may differ in the last bits of its weights."""
    import os
    import platform

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def build_record(cfg: RecipeConfig, log: dict, model_dir: Path) -> dict:
    """The build's identity: the recipe's fingerprint (every step's settings and inputs),
    its seeds, the time each step took on which machine, and the weights' digest."""
    steps = [k for k in ("world", "tokenizer", "clip", "lm", "assemble", "stage1", "stage2") if k in log]
    return {
        "recipe_fingerprint": log[steps[-1]]["fingerprint"],
        "seeds": {"world_first_seed": cfg.world.first_seed, "world_scenes": cfg.world.scenes,
                  "clip": cfg.clip.seed, "lm": cfg.lm.seed, "stage1": cfg.stage1.seed, "stage2": cfg.stage2.seed},
        "step_seconds": {k: log[k].get("seconds") for k in steps},
        "build_seconds": round(sum(log[k].get("seconds") or 0 for k in steps), 1),
        "resumed_steps": [k for k in steps if log[k].get("skipped")],
        "machine": machine() | {"device": cfg.device},
        "precision": log.get("precision"),
        "weights_sha256": _digest(model_dir / "model.safetensors"),
    }


def read_record(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "build_log.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no build record (is {model_dir} a model `llava-train default-model` built?)")
    record = json.loads(path.read_text()).get("record")
    if not record:
        raise ValueError(f"{path} has no build record")
    return record


def add_bench(model_dir: str | Path, split: str, report: dict) -> None:
    """Put a shapes-bench result into the model's build record (written atomically)."""
    path = Path(model_dir) / "build_log.json"
    log = json.loads(path.read_text())
    log.setdefault("record", {}).setdefault("shapes_bench", {})[split] = {
        "accuracy": round(report["accuracy"], 4), "questions": report["questions"], "scenes": report["scenes"],
        "by_kind": {k: round(v["accuracy"], 4) for k, v in report["by_kind"].items()}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log, indent=1, default=str))
    tmp.replace(path)


def compare_records(rebuilt: dict, shipped: dict, tolerance: float = 0.03) -> list[str]:
    """What differs between a rebuild's record and the shipped model's, as readable lines;
    empty when the rebuild reproduces it (same recipe; shapes-bench within ``tolerance``
    per split; identical weights are reported, not required: other CPUs round differently)."""
    problems = []
    if rebuilt.get("recipe_fingerprint") != shipped.get("recipe_fingerprint"):
        problems.append(f"recipe fingerprint {rebuilt.get('recipe_fingerprint')} != shipped "
                        f"{shipped.get('recipe_fingerprint')}: the recipe or its inputs changed")
    if rebuilt.get("seeds") != shipped.get("seeds"):
        problems.append(f"seeds {rebuilt.get('seeds')} != shipped {shipped.get('seeds')}")
    for split, theirs in (shipped.get("shapes_bench") or {}).items():
        ours = (rebuilt.get("shapes_bench") or {}).get(split)
        if ours is None:
            problems.append(f"shapes-bench {split}: no result in the rebuild's record")
        elif abs(ours["accuracy"] - theirs["accuracy"]) > tolerance:
            problems.append(f"shapes-bench {split}: {ours['accuracy']:.1%} vs shipped {theirs['accuracy']:.1%} "
                            f"(tolerance {tolerance:.0%})")
    return problems

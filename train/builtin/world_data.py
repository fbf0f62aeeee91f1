"""The synthetic world as LLaVA training files: images, stage-1 captions, stage-2 instructions.

Stage 1 gets every caption of a scene as its own image-caption pair (LLaVA's brief
description prompt, which the ``plain`` format drops anyway). Stage 2 gets each
scene's conversation, and with the given odds a detailed description and a complex
reasoning sample, all written by the template teacher from the symbolic context.
Scenes are drawn only from training seeds, below shapes-bench's first seed.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from train.builtin.symbolic import scene_context
from train.builtin.template_teacher import template_conversation
from train.builtin.world import WorldConfig, make_scene

BRIEF_PROMPTS = ("Describe the image briefly.", "Give a short caption of the picture.", "What does this image show?")


@dataclass(frozen=True)
class WorldDataConfig:
    scenes: int = 4000
    first_seed: int = 0
    detail_odds: float = 0.3
    complex_odds: float = 0.4
    turns: tuple[int, int] = (4, 7)  # question-answer pairs per conversation
    short_odds: float = 0.6  # share of conversation questions asked for a one-word answer
    weights: tuple[tuple[str, float], ...] = ()  # (question kind, relative odds): ask some kinds more
    world: WorldConfig = WorldConfig()

    def __post_init__(self) -> None:
        from train.builtin.shapes_bench import FIRST_SEED

        if self.first_seed + self.scenes > FIRST_SEED:
            raise ValueError(f"training scenes must use seeds below {FIRST_SEED} (shapes-bench's held-out seeds)")


def _write_json(path: Path, data: list) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def write_world_data(out: str | Path, cfg: WorldDataConfig = WorldDataConfig()) -> dict[str, Path]:
    """Render the scenes and write ``captions.json``, ``instruct.json`` and ``text.txt`` under ``out``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    captions, instruct, text = [], [], []
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.scenes):
        scene = make_scene(seed, cfg.world)
        image = f"images/scene-{seed}.png"
        path = out / image
        if not path.is_file():  # written whole or not at all: a rerun after a kill skips only complete files
            tmp = path.with_name(path.name + ".tmp")
            scene.render().save(tmp, format="PNG")
            tmp.replace(path)
        rng = random.Random(seed)
        context = scene_context(scene, image)
        for j, caption in enumerate(context.captions):
            captions.append(_sample(f"scene-{seed}-caption-{j}", image,
                                    [{"from": "human", "value": rng.choice(BRIEF_PROMPTS)},
                                     {"from": "gpt", "value": caption}]))
            text.append(caption)
        kinds = ["conversation"]
        if rng.random() < cfg.detail_odds:
            kinds.append("detail")
        if rng.random() < cfg.complex_odds:
            kinds.append("complex")
        for kind in kinds:
            conv = template_conversation(context, kind, seed, cfg.turns, cfg.short_odds, dict(cfg.weights) or None)
            instruct.append(_sample(f"scene-{seed}-{kind}", image, conv))
            text.append(" ".join(t["value"] for t in conv))
    paths = {"captions": out / "captions.json", "instruct": out / "instruct.json", "text": out / "text.txt"}
    _write_json(paths["captions"], captions)
    _write_json(paths["instruct"], instruct)
    paths["text"].write_text("\n".join(text) + "\n")
    return paths


def _sample(sid: str, image: str, conversation: list[dict]) -> dict:
    conv = [dict(t) for t in conversation]
    conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return {"id": sid, "image": image, "conversations": conv}

"""Symbolic contexts of the synthetic world's scenes (optionally rendering their images)."""

from pathlib import Path

from train.builtin.symbolic import SymbolicContext, scene_context
from train.builtin.world import make_scene


def world_contexts(count: int, first_seed: int = 0, render_dir: Path | None = None) -> list[SymbolicContext]:
    """Scenes ``first_seed .. first_seed + count - 1``; image paths are ``scene-<seed>.png``
    (relative to ``render_dir``, where the images are written when it is given)."""
    from train.builtin.shapes_bench import FIRST_SEED

    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if first_seed + count > FIRST_SEED:
        raise ValueError(f"scene seeds from {FIRST_SEED} on are held out for shapes-bench; "
                         f"{first_seed} + {count} scenes reaches them")
    if render_dir is not None:
        Path(render_dir).mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(first_seed, first_seed + count):
        scene = make_scene(seed)
        name = f"scene-{seed}.png"
        if render_dir is not None and not (Path(render_dir) / name).exists():
            scene.render().save(Path(render_dir) / name)
        out.append(scene_context(scene, image=name))
    return out

"""The built-in world's scenes as a model's vision tokens, for ``binding_testbed.py --task tokens``.

Writes, for ``--scenes`` training and ``--held-out`` scenes (seeds from 1,000,000, as shapes-bench),
each picture's patch tokens from the vision tower (``--after-projector``: what the LLM gets) and
its objects as (colour, shape, cell 0-8): the testbed then asks "where is the X" of a fresh small LM
that reads the real tokens instead of its perfect one-hot slots.

``python benchmarks/experiments/binding_tokens.py --model DIR --out tokens.pt``
"""

import argparse

import torch

from train.builtin.probe import _load, vision_tokens
from train.builtin.shapes_bench import FIRST_SEED, SPLITS
from train.builtin.world import make_scene


def scenes_as_tokens(model, image_cfg, seeds, world, after_projector: bool, layer: int | None) -> dict:
    tokens, objects = [], []
    for i in range(0, len(seeds), 512):
        scenes = [make_scene(s, world) for s in seeds[i:i + 512]]
        tokens.append(vision_tokens(model, image_cfg, [s.render() for s in scenes], after_projector, layer))
        for scene in scenes:
            cats = [o.category for o in scene.objects]
            objects.append([(o.colour, o.shape, o.cell[0] * 3 + o.cell[1])
                            for o in scene.objects if cats.count(o.category) == 1])
    return {"tokens": torch.cat(tokens), "objects": objects}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a LLaVA folder (the recipe's stage-1 model, say)")
    p.add_argument("--out", required=True)
    p.add_argument("--scenes", type=int, default=20000)
    p.add_argument("--held-out", type=int, default=512)
    p.add_argument("--split", choices=sorted(SPLITS), default="main")
    p.add_argument("--after-projector", action="store_true")
    p.add_argument("--layer", type=int, help="the tower's hidden states at this index (default: the model's "
                   "feature layer; 0: patch and position embeddings only)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, image_cfg = _load(a.model)
    world = SPLITS[a.split]
    data = {"train": scenes_as_tokens(model, image_cfg, list(range(a.scenes)), world, a.after_projector, a.layer),
            "held_out": scenes_as_tokens(model, image_cfg, list(range(FIRST_SEED, FIRST_SEED + a.held_out)), world,
                                         a.after_projector, a.layer),
            "settings": vars(a)}
    torch.save(data, a.out)
    print({k: tuple(v["tokens"].shape) for k, v in data.items() if k != "settings"}, flush=True)


if __name__ == "__main__":
    main()

"""``llava-train probe``: what a LLaVA's vision tokens tell about the synthetic world's objects.

For each object of a scene, the vision token of the patch under its centre is taken (as
the LLM receives it: the tower's selected layer, after the projector with
``--after-projector``) and small classifiers learn the object's shape, colour, row and
column from it on training scenes; their accuracy on held-out scenes says what the
tokens carry. A linear probe says what is there for the taking; an MLP probe what is
there at all. This is the measurement behind the built-in model's analysis in the README
(e.g. CLIP's default position embeddings: row at chance; ``position_std=1.0``: 100 %).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from train.builtin.shapes_bench import FIRST_SEED, SPLITS
from train.builtin.world import COLOURS, SHAPES, make_scene

ATTRIBUTES = {"shape": list(SHAPES), "colour": sorted(COLOURS), "row": [0, 1, 2], "column": [0, 1, 2]}


@dataclass(frozen=True)
class ProbeConfig:
    model: str
    train_scenes: int = 2000
    test_scenes: int = 200
    split: str = "main"  # which drawing style the scenes come from (shapes_bench.SPLITS)
    after_projector: bool = False
    steps: int = 300
    seed: int = 0


def _load(model_dir: str, attn_implementation: str | None = None):
    from transformers import LlavaForConditionalGeneration

    from train.llava.trainer import _image_config

    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn_implementation).eval()
    image_cfg, _ = _image_config(model_dir, model.config.vision_config.image_size)  # as training reads it
    return model, image_cfg


def vision_tokens(model, image_cfg, images, after_projector: bool, layer: int | None = None) -> torch.Tensor:
    """(images, patches, width): the tokens the LLM gets for each image, class token dropped
    (``layer``: the tower's hidden states at that index instead of the model's feature layer)."""
    from llava_model.image_processing import preprocess_images

    cfg = model.config
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 128):
            pixels = preprocess_images(images[i:i + 128], image_cfg).float()
            hidden = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
            feats = hidden.hidden_states[cfg.vision_feature_layer if layer is None else layer]
            if cfg.vision_feature_select_strategy == "default":
                feats = feats[:, 1:]
            out.append(model.model.multi_modal_projector(feats) if after_projector else feats)
    return torch.cat(out)


def patch_index(obj, side: int) -> int:
    """Index, among a ``side`` x ``side`` grid of patch tokens, of the patch under ``obj``'s centre."""
    x, y = obj.centre
    return min(int(y * side), side - 1) * side + min(int(x * side), side - 1)


def _examples(tokens: torch.Tensor, scenes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    side = round(tokens.shape[1] ** 0.5)
    rows, labels = [], {k: [] for k in ATTRIBUTES}
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            rows.append(tokens[i, patch_index(obj, side)])
            row, col = obj.cell
            for name, value in (("shape", obj.shape), ("colour", obj.colour), ("row", row), ("column", col)):
                labels[name].append(ATTRIBUTES[name].index(value))
    return torch.stack(rows), {k: torch.tensor(v) for k, v in labels.items()}


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, hidden: int, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    width = x.shape[1]
    probe = torch.nn.Linear(width, classes) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def held_out_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                      classes: int, hidden: int, steps: int, seed: int) -> float:
    """Fit a probe (linear where ``hidden`` is 0, else an MLP) on the training rows; its accuracy on the test rows."""
    with torch.enable_grad():
        probe = _fit(x_train, y_train, classes, hidden, steps, seed)
    with torch.no_grad():
        return round((probe(x_test).argmax(1) == y_test).float().mean().item(), 3)


def run_probe(cfg: ProbeConfig) -> dict:
    """Held-out accuracy of a linear and an MLP probe per attribute, with chance beside them."""
    if cfg.split not in SPLITS:
        raise ValueError(f"unknown split {cfg.split!r}; known: {sorted(SPLITS)}")
    if not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"{cfg.model}: not a model directory (no config.json)")
    model, image_cfg = _load(cfg.model)
    world = SPLITS[cfg.split]
    train = [make_scene(s, world) for s in range(cfg.train_scenes)]
    test = [make_scene(s, world) for s in range(FIRST_SEED, FIRST_SEED + cfg.test_scenes)]
    x_train, y_train = _examples(vision_tokens(model, image_cfg, [s.render() for s in train], cfg.after_projector),
                                 train)
    x_test, y_test = _examples(vision_tokens(model, image_cfg, [s.render() for s in test], cfg.after_projector), test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    report = {"model": cfg.model, "split": cfg.split, "after_projector": cfg.after_projector,
              "objects": {"train": len(x_train), "test": len(x_test)}, "attributes": {}}
    for name, classes in ATTRIBUTES.items():
        counts = torch.bincount(y_test[name], minlength=len(classes))
        row = {"chance": round(counts.max().item() / len(x_test), 3)}
        for kind, hidden in (("linear", 0), ("mlp", 256)):
            row[kind] = held_out_accuracy(x_train, y_train[name], x_test, y_test[name], len(classes), hidden,
                                          cfg.steps, cfg.seed)
        report["attributes"][name] = row
    return report


def markdown(report: dict) -> str:
    lines = ["| attribute | chance | linear probe | MLP probe |", "|---|---|---|---|"]
    for name, row in report["attributes"].items():
        lines.append(f"| {name} | {row['chance']:.0%} | {row['linear']:.0%} | {row['mlp']:.0%} |")
    return "\n".join(lines) + "\n"

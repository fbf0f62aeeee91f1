"""``llava-train probe --lookup``: does the LLM find a named object, and does its place come across?

The model is asked "Where is the <colour> <shape> in the image?" about one object of each
scene. At the question's colour word (where the name first appears) two things are measured
for every layer of the LLM:

- **attention**, per head: the share of that word's attention on the named object's image
  token, beside the mean share on each *other* object's token. A head that finds the object
  puts far more on the first than on the second;
- **place**: how well a linear probe, fitted on training scenes, reads the named object's
  cell (row and column of the grid, one of nine) from the residual stream at that word, on
  held-out scenes; beside it the same probe at the object's own image token, which says
  what there was to copy.

If the head finds the object and the place reads well at its image token but not at the
word, the look-up copies *what* the object is and drops *where* it is: the built-in
model's relation failure (README, "What limits it"). Layer 0 is the input embeddings, so
at the word it is at chance by construction.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from train.builtin.probe import _load, held_out_accuracy, patch_index
from train.builtin.shapes_bench import FIRST_SEED, SPLITS
from train.builtin.world import make_scene

PLACES = 9  # the 3 x 3 grid's cells


@dataclass(frozen=True)
class LookupConfig:
    model: str
    train_scenes: int = 2000
    test_scenes: int = 200
    split: str = "main"
    chat_format: str = "vicuna_v1"
    steps: int = 300
    seed: int = 0


@dataclass(frozen=True)
class _Sample:
    ids: list[int]
    word: int  # index of the colour word's first token
    target: int  # index of the named object's image token
    others: list[int]  # indices of the other objects' image tokens
    place: int  # row * 3 + column of the named object


def _samples(scenes, tokenizer, cfg: LookupConfig, side: int, cls_token: bool) -> list[_Sample]:
    """``side`` x ``side`` patch tokens per image, after a class token where ``cls_token``."""
    from llava_model.chat_format import IMAGE, Turn, prompt

    n_image = side * side + cls_token
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    out = []
    for scene in scenes:
        objs = list(scene.objects)
        named = random.Random(scene.seed).randrange(len(objs))
        obj = objs[named]
        text = prompt(cfg.chat_format, None, [Turn("user", f"{IMAGE}\nWhere is the {obj.category} in the image?")])
        enc = tokenizer(text, return_offsets_mapping=True)
        start = text.index(f"the {obj.category} in the image") + len("the ")
        word = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a <= start + 1)
        ids = enc["input_ids"]
        piece = tokenizer.decode([ids[word]]).strip()
        if not piece or not obj.colour.startswith(piece):
            raise RuntimeError(f"the name's first token is {piece!r}, not the start of {obj.colour!r}: {text!r}")
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * n_image + ids[at + 1:]
        row, col = obj.cell
        targets = [at + cls_token + patch_index(o, side) for o in objs]
        out.append(_Sample(ids, word + n_image - 1, targets[named],
                           [t for i, t in enumerate(targets) if i != named and t != targets[named]], row * 3 + col))
    return out


def _run(model, image_cfg, samples: list[_Sample], images, pad_id: int, batch: int = 64):
    """Per sample: hidden states at the word and at the target (layers x width), and the
    attention of the word on the target and on the others (layers x heads)."""
    from llava_model.image_processing import preprocess_images

    at_word, at_target, named, other = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            length = max(len(s.ids) for s in chunk)
            ids = torch.full((len(chunk), length), pad_id)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(chunk):  # right padding: positions stay as in a single request
                ids[j, :len(s.ids)] = torch.tensor(s.ids)
                mask[j, :len(s.ids)] = 1
            pixels = preprocess_images(images[i:i + batch], image_cfg).float()
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                        output_hidden_states=True, output_attentions=True)
            hidden = torch.stack(out.hidden_states, 1)  # batch, layers + 1, tokens, width
            attn = torch.stack(out.attentions, 1)  # batch, layers, heads, tokens, tokens
            for j, s in enumerate(chunk):
                at_word.append(hidden[j, :, s.word])
                at_target.append(hidden[j, :, s.target])
                row = attn[j, :, :, s.word]
                named.append(row[..., s.target])
                other.append(row[..., s.others].mean(-1) if s.others else torch.full(row.shape[:2], float("nan")))
    return torch.stack(at_word), torch.stack(at_target), torch.stack(named), torch.stack(other)


def _probe_accuracy(x_train, y_train, x_test, y_test, steps: int, seed: int) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    return held_out_accuracy((x_train - mean) / std, y_train, (x_test - mean) / std, y_test, PLACES, 0, steps, seed)


def run_lookup(cfg: LookupConfig) -> dict:
    if cfg.split not in SPLITS:
        raise ValueError(f"unknown split {cfg.split!r}; known: {sorted(SPLITS)}")
    if not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"{cfg.model}: not a model directory (no config.json)")
    from transformers import AutoTokenizer

    model, image_cfg = _load(cfg.model, attn_implementation="eager")  # eager: the only one that returns weights
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    cls_token = model.config.vision_feature_select_strategy == "full"  # "default" drops it
    world = SPLITS[cfg.split]
    results = {}
    for name, seeds in (("train", range(cfg.train_scenes)), ("test", range(FIRST_SEED, FIRST_SEED + cfg.test_scenes))):
        scenes = [make_scene(s, world) for s in seeds]
        samples = _samples(scenes, tokenizer, cfg, side, cls_token)
        results[name] = (samples, _run(model, image_cfg, samples, [s.render() for s in scenes], tokenizer.pad_token_id))
    (train, (w_train, t_train, _, _)), (test, (w_test, t_test, named, other)) = results["train"], results["test"]
    y_train = torch.tensor([s.place for s in train])
    y_test = torch.tensor([s.place for s in test])
    layers = []
    for layer in range(w_train.shape[1]):
        row = {"layer": layer,
               "place_at_word": _probe_accuracy(w_train[:, layer], y_train, w_test[:, layer], y_test, cfg.steps, cfg.seed),
               "place_at_object": _probe_accuracy(t_train[:, layer], y_train, t_test[:, layer], y_test, cfg.steps, cfg.seed)}
        if layer:
            row["heads"] = [{"named": round(named[:, layer - 1, h].mean().item(), 3),
                             "other": round(other[:, layer - 1, h].nanmean().item(), 3)}
                            for h in range(named.shape[2])]
        layers.append(row)
    chance = torch.bincount(y_test, minlength=PLACES).max().item() / len(y_test)
    return {"model": cfg.model, "split": cfg.split, "scenes": {"train": len(train), "test": len(test)},
            "chance": round(chance, 3), "layers": layers}


def markdown(report: dict) -> str:
    lines = [(f"place: the named object's cell, 9 ways (chance {report['chance']:.0%}); "
              "attention: from the question's colour word, named object / mean of each other object"),
             "", "| layer | place at the colour word | place at the object's token | attention per head |",
             "|---|---|---|---|"]
    for row in report["layers"]:
        heads = ", ".join(f"{h['named']:.0%} / {h['other']:.0%}" for h in row.get("heads", [])) or "(embeddings)"
        lines.append(f"| {row['layer']} | {row['place_at_word']:.0%} | {row['place_at_object']:.0%} | {heads} |")
    return "\n".join(lines) + "\n"

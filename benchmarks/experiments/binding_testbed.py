"""Does a small Llama learn to bind a name to a place? A synthetic testbed for the built-in
model's weakest question kind (relation needs "where is the X" first; see
``benchmarks/results/shapes_bench_stage2_experiments.md``, section I).

Scenes of 2-4 objects (8 colours x 3 shapes) in a 3x3 grid; the question "where is the red
circle ?" is answered with the object's place ("top left"). Two tasks:

- ``slots``: the scene as nine "image tokens", one per cell, each a learned linear map of a
  one-hot colour, shape and cell, as a perfect vision tower and projector would give the LLM;
- ``text``: the scene written out in words before the question;
- ``tokens``: the nine slots are a real vision tower's patch tokens of the built-in world's
  pictures (``binding_tokens.py`` writes them; held-out pictures score), through a fresh linear
  map: the same LM task with what the built-in model's LLM actually sees.

No project code and no data for ``slots`` and ``text``: transformers' Llama from nothing, scenes
drawn on the fly.
``python benchmarks/experiments/binding_testbed.py --task slots --lr 1e-4 --warmup 100``
prints the whole-answer accuracy (greedy, 256 fresh scenes) every 250 steps.
"""

import argparse
import random
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right"]
WORDS = sorted(set(COLOURS + SHAPES + " ".join(PLACES).split()
                   + ["a", "in", "the", ".", "where", "is", "?", "ans", "<pad>", "<s>"]))
SLOT = len(COLOURS) + len(SHAPES) + len(PLACES) + 1  # one-hot colour, shape, cell; an "empty" bit


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("slots", "text", "tokens"), default="slots")
    p.add_argument("--tokens", help="--task tokens: a file from binding_tokens.py (a real tower's tokens)")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up (0: none)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lm", help="a pretrained Llama folder (with its tokenizer) instead of a fresh LM; "
                   "--width/--layers/--heads are then its own")
    p.add_argument("--projector", help="--task tokens: a LLaVA folder whose 2-layer MLP projector (mlp2x_gelu) "
                   "maps the tokens, instead of a fresh linear map")
    p.add_argument("--freeze-projector", action="store_true", help="keep that projector as it is")
    return p.parse_args(argv)


class Scenes:
    def __init__(self, task: str, seed: int, tokens: dict | None = None):
        self.task, self.rng, self.tokens = task, random.Random(seed), tokens

    def sample(self, held_out: bool = False) -> tuple[list[str], list[str], torch.Tensor | None]:
        """(tokens before the answer, the answer's words, the nine slots or None)."""
        rng = self.rng
        if self.task == "tokens":  # a real picture's tokens; its objects whose name is unique
            part = self.tokens["held_out" if held_out else "train"]
            while True:
                i = rng.randrange(len(part["objects"]))
                if part["objects"][i]:
                    break
            colour, shape, cell = rng.choice(part["objects"][i])
            question = ["where", "is", "the", colour, shape, "?", "ans"]
            return ["<s>"] + ["<pad>"] * 9 + question, PLACES[cell].split(), part["tokens"][i].float()
        n = rng.randint(2, 4)
        cells = rng.sample(range(9), n)
        objects: list[tuple[int, int]] = []
        while len(objects) < n:
            obj = (rng.randrange(len(COLOURS)), rng.randrange(len(SHAPES)))
            if obj not in objects:
                objects.append(obj)
        k = rng.randrange(n)
        question = ["where", "is", "the", COLOURS[objects[k][0]], SHAPES[objects[k][1]], "?", "ans"]
        answer = PLACES[cells[k]].split()
        if self.task == "text":
            scene = ["<s>"]
            for (c, s), cell in zip(objects, cells):
                scene += ["a", COLOURS[c], SHAPES[s], "in", "the", *PLACES[cell].split(), "."]
            return scene + question, answer, None
        slots = torch.zeros(9, SLOT)
        for cell in range(9):
            slots[cell, len(COLOURS) + len(SHAPES) + cell] = 1
            slots[cell, -1] = 1
        for (c, s), cell in zip(objects, cells):
            slots[cell, c] = slots[cell, len(COLOURS) + s] = 1
            slots[cell, -1] = 0
        return ["<s>"] + ["<pad>"] * 9 + question, answer, slots


def main(argv=None) -> None:
    a = options(argv)
    print(vars(a), flush=True)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tokens = torch.load(a.tokens) if a.task == "tokens" else None
    words = WORDS
    if tokens is not None:  # the world's colour words too (the other tasks keep their vocabulary)
        names = {w for part in ("train", "held_out") for objs in tokens[part]["objects"] for o in objs for w in o[:2]}
        words = sorted(set(WORDS) | names)
    if a.lm:  # the words as that LM's tokenizer writes them; "<s>" its BOS, the slots' "<pad>" any id
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(a.lm)
        model = LlamaForCausalLM.from_pretrained(a.lm, dtype=torch.float32)
        marks = {"<s>": tokenizer.bos_token_id, "<pad>": tokenizer.bos_token_id}

        def encode(ws: list[str]) -> list[int]:
            out, run = [], []
            for w in [*ws, None]:
                if w in marks or w is None:
                    if run:
                        out += tokenizer(" ".join(run), add_special_tokens=False)["input_ids"]
                        run = []
                    if w is not None:
                        out.append(marks[w])
                else:
                    run.append(w)
            return out
    else:
        ids = {w: i for i, w in enumerate(words)}
        config = LlamaConfig(hidden_size=a.width, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                             num_key_value_heads=a.heads, head_dim=a.width // a.heads,
                             intermediate_size=a.width * 8 // 3 // 32 * 32, vocab_size=len(words),
                             max_position_embeddings=256)
        model = LlamaForCausalLM(config)

        def encode(ws: list[str]) -> list[int]:
            return [ids[w] for w in ws]
    width, vocab = model.config.hidden_size, model.config.vocab_size
    projector = torch.nn.Linear(SLOT if tokens is None else tokens["train"]["tokens"].shape[-1], width)
    if a.projector:  # the model's own: linear_1, GELU, linear_2
        from pathlib import Path

        from safetensors.torch import load_file

        weights = load_file(Path(a.projector) / "model.safetensors")
        first, second = (weights[f"multi_modal_projector.linear_{i}.weight"] for i in (1, 2))
        projector = torch.nn.Sequential(torch.nn.Linear(first.shape[1], first.shape[0]), torch.nn.GELU(),
                                        torch.nn.Linear(second.shape[1], second.shape[0]))
        for layer, i in ((projector[0], 1), (projector[2], 2)):
            layer.weight.data.copy_(weights[f"multi_modal_projector.linear_{i}.weight"])
            layer.bias.data.copy_(weights[f"multi_modal_projector.linear_{i}.bias"])
        projector.requires_grad_(not a.freeze_projector)
    scenes = Scenes(a.task, a.seed, tokens)

    def batch(size: int, held_out: bool = False):
        rows = [(encode(t), encode(x), slots) for t, x, slots in (scenes.sample(held_out) for _ in range(size))]
        length = max(len(t) + len(x) for t, x, _ in rows)
        embeds = torch.zeros(size, length, width)
        labels = torch.full((size, length), -100)
        mask = torch.zeros(size, length, dtype=torch.long)
        table = model.get_input_embeddings()
        for i, (prefix, answer, slots) in enumerate(rows):
            e = table(torch.tensor(prefix + answer))
            if slots is not None:
                e = torch.cat([e[:1], projector(slots), e[10:]])
            embeds[i, :len(e)] = e
            mask[i, :len(e)] = 1
            labels[i, len(prefix):len(e)] = torch.tensor(answer)
        return embeds, labels, mask

    params = [q for q in (*model.parameters(), *projector.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    started = time.time()
    for step in range(1, a.steps + 1):
        if a.warmup:
            for group in optimizer.param_groups:
                group["lr"] = a.lr * min(1.0, step / a.warmup)
        embeds, labels, mask = batch(a.batch)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 250 == 0:
            with torch.no_grad():
                embeds, labels, mask = batch(256, held_out=True)
                guess = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].argmax(-1)
                scored = labels[:, 1:] != -100
                right = ((guess == labels[:, 1:]) | ~scored).all(1).float().mean().item()
            print(f"step {step}  loss {loss.item():.3f}  accuracy {right:.3f}  {time.time() - started:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()

"""From nothing to LLaVA's ingredients: a tokenizer, a tiny CLIP and a tiny LLM.

Nothing pretrained can be downloaded here, so the built-in model grows its own parts
on the synthetic world: a byte-level BPE tokenizer trained on the world's text, a CLIP
(vision + text towers) trained contrastively on image-caption pairs, and a causal LM
trained on the world's captions and conversations. Each is written as an ordinary
Hugging Face checkpoint, so the LLaVA stages consume them exactly as they would
consume CLIP ViT-L/14 and Vicuna.
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llava_model.chat_format import Turn, segments

SPECIAL = ["<unk>", "<s>", "<pad>", "</s>"]  # </s> is not id 2: CLIP's text pooling treats 2 as legacy


@dataclass(frozen=True)
class ClipConfig:
    image_size: int = 64
    patch_size: int = 8
    hidden: int = 128
    layers: int = 4
    heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    projection_dim: int = 128
    steps: int = 400
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class LmConfig:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 688
    steps: int = 300
    batch: int = 32
    max_length: int = 256
    lr: float = 2e-3
    seed: int = 0


def train_tokenizer(texts: list[str], out: Path, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress)


def train_clip(pixels: torch.Tensor, captions: list[list[str]], tokenizer, cfg: ClipConfig, out: Path,
               progress: bool = True) -> list[float]:
    """Contrastive CLIP on (image, one of its captions) pairs; saves a ``CLIPModel`` to ``out``."""
    from transformers import CLIPConfig, CLIPModel

    from llava_model.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    eos = tokenizer.convert_tokens_to_ids("</s>")
    config = CLIPConfig(
        text_config={"hidden_size": cfg.text_hidden, "intermediate_size": cfg.text_hidden * 4,
                     "num_hidden_layers": cfg.text_layers, "num_attention_heads": 2,
                     "max_position_embeddings": 96, "vocab_size": len(tokenizer), "eos_token_id": eos,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id},
        vision_config={"hidden_size": cfg.hidden, "intermediate_size": cfg.hidden * 4,
                       "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
                       "image_size": cfg.image_size, "patch_size": cfg.patch_size},
        projection_dim=cfg.projection_dim,
    )
    model = CLIPModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    losses = []
    bar = _bar(cfg.steps, "clip", progress)
    for step in range(cfg.steps):
        idx = rng.sample(range(len(captions)), cfg.batch)
        texts = [rng.choice(captions[i]) + "</s>" for i in idx]
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _cosine(step, cfg.steps, max(1, cfg.steps // 20))
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     pixel_values=pixels[idx], return_loss=True).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": cfg.image_size},
        "crop_size": {"height": cfg.image_size, "width": cfg.image_size}, "do_resize": True,
        "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
    }, indent=2))
    return losses


def lm_texts(conversations: list[list[dict]], captions: list[str], chat_format: str = "vicuna_v1") -> list[str]:
    """The LM's corpus: captions, and conversations in the chat format (images left out)."""
    out = list(captions)
    for conv in conversations:
        turns = [Turn("user" if t["from"] == "human" else "assistant", t["value"].replace("<image>\n", ""))
                 for t in conv]
        out.append("".join(text for text, _ in segments(chat_format, None, turns)))
    return out


def train_lm(texts: list[str], tokenizer, cfg: LmConfig, out: Path, progress: bool = True) -> list[float]:
    """A Llama-architecture causal LM trained on ``texts``; saved with its tokenizer to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    config = LlamaConfig(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, head_dim=cfg.hidden // cfg.heads, intermediate_size=cfg.intermediate,
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02,
    )
    model = LlamaForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    losses = []
    bar = _bar(cfg.steps, "lm", progress)
    for step in range(cfg.steps):
        batch = [texts[i] for i in rng.sample(range(len(texts)), cfg.batch)]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _cosine(step, cfg.steps, max(1, cfg.steps // 20))
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return losses

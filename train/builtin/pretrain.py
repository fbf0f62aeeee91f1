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
    image_size: int = 96
    patch_size: int = 32  # 3 x 3 = 9 image tokens: one per cell of the world's grid
    hidden: int = 128
    layers: int = 4
    heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    projection_dim: int = 128
    steps: int = 450
    batch: int = 128
    scenes: int = 2500  # training scenes it sees, each with its near-twins (train.world.variants)
    lr: float = 1e-3
    # Options measured in the 2026-11-28 session (see README, "what limits the built-in model"):
    position_std: float = 0.0  # > 0: re-initialise the vision position embeddings at this scale
    captions: str = "all"  # "all": every caption of a scene; "layout": place+size+colour+shape of each object
    reshapes: int = 1  # near-twins with other shapes per scene (train.world.variants)
    bf16: bool = True  # autocast matmuls to bf16 (AMX/AVX-512-BF16 CPUs and GPUs run them much faster)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.captions not in ("all", "layout"):
            raise ValueError(f"ClipConfig.captions must be 'all' or 'layout', got {self.captions!r}")
        if self.reshapes < 0 or self.position_std < 0:
            raise ValueError("ClipConfig.reshapes and position_std must not be negative")


@dataclass(frozen=True)
class LmConfig:
    hidden: int = 192
    layers: int = 3
    heads: int = 3  # head size 64, one vLLM's CPU attention supports
    kv_heads: int = 3
    intermediate: int = 512
    steps: int = 150
    batch: int = 32
    max_length: int = 256
    lr: float = 2e-3
    bf16: bool = True
    seed: int = 0


def train_tokenizer(texts: list[str], out: Path, vocab_size: int = 1024):
    """A Llama-style BPE tokenizer trained on the world's text, saved to ``out``.

    Like Llama's sentencepiece tokenizer: a space is part of the word after it (``▁red``),
    the text's first word gets one too, any character outside the vocabulary falls back to
    its UTF-8 bytes (``<0xC3>``), and decoding drops the one space that starts a text. So
    a reply decoded on its own reads ``2``, not `` 2``, without the chat format or the
    server stripping anything. ``vocab_size`` counts the 256 byte tokens and the specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    if vocab_size < len(SPECIAL) + len(byte_tokens) + 64:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for words next to 256 byte tokens")
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = metaspace
    learner.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens), special_tokens=SPECIAL, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = dict(learned["vocab"])
    for token in byte_tokens:  # appended after the learned pieces: ids stay dense and deterministic
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(SPECIAL)
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _fit(model, loss_fn, steps: int, lr: float, weight_decay: float, bf16: bool, desc: str,
         progress: bool, device: str = "cpu") -> list[float]:
    """AdamW with warm-up and cosine decay on ``loss_fn(step)``; bf16 autocast on the CPU."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, steps, max(1, steps // 20))
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def train_clip(pixels: torch.Tensor, captions: list[list[str]], tokenizer, cfg: ClipConfig, out: Path,
               progress: bool = True, groups: list[list[int]] | None = None, device: str = "cpu") -> list[float]:
    """Contrastive CLIP on (image, one of its captions) pairs; saves a ``CLIPModel`` to ``out``.

    ``groups`` (lists of image indices, e.g. a scene and its near-twins) enter a batch
    together, so each image's hardest negatives are in its batch.
    """
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
    if cfg.position_std:
        # With CLIP's tiny initial position embeddings (0.02) a briefly trained tower drops where
        # a patch is (a probe on its tokens finds row and column at chance); at 1.0, as large as
        # the patch content, every token keeps its place (probe: 100 %).
        torch.nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=cfg.position_std)

    def loss(step: int) -> torch.Tensor:
        if groups:
            idx = []
            while len(idx) < cfg.batch:
                idx += rng.choice(groups)
            idx = idx[:cfg.batch]
        else:
            idx = rng.sample(range(len(captions)), cfg.batch)
        texts = [rng.choice(captions[i]) + "</s>" for i in idx]
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                     pixel_values=pixels[idx].float().to(device), return_loss=True).loss

    model.to(device)
    losses = _fit(model, loss, cfg.steps, cfg.lr, 0.05, cfg.bf16, "clip", progress, device)
    model.cpu().eval().save_pretrained(out)
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


def train_lm(texts: list[str], tokenizer, cfg: LmConfig, out: Path, progress: bool = True,
             device: str = "cpu") -> list[float]:
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

    def loss(step: int) -> torch.Tensor:
        batch = [texts[i] for i in rng.sample(range(len(texts)), cfg.batch)]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    model.to(device)
    losses = _fit(model, loss, cfg.steps, cfg.lr, 0.01, cfg.bf16, "lm", progress, device)
    model.cpu().eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return losses

"""transformers as the reference: greedy generation from a LLaVA model on CPU."""

import torch

from llava_model.vision import num_image_tokens


def hf_processor(mode: str, side: int, tower: str = "clip"):
    """transformers' own (PIL) processor: SigLIP's for a SigLIP tower, LLaVA's with
    padding for ``pad``, else CLIP's."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if tower == "siglip":
        return SiglipImageProcessorPil(size={"height": side, "width": side})
    kwargs = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if mode == "pad":
        return LlavaImageProcessorPil(do_pad=True, **kwargs)
    return CLIPImageProcessorPil(**kwargs)


def hf_pixel_values(images, spec):
    """transformers' own processor where ours is byte-exact with it (the default
    ``exact`` resampler, and ``pil``); else the checkpoint's settings.

    The ``torch`` resampler is within two grey levels of transformers (tested on its
    own in test_image_processing), which could flip a greedy token of a random model,
    so model parity then feeds both sides the same pixels.
    """
    from llava_model.image_processing import ImageProcessingConfig, preprocess_images
    from llava_model.tiny import preprocessor_config

    if spec.resampler not in ("pil", "exact"):
        cfg = ImageProcessingConfig.from_hf_dict(preprocessor_config(spec), spec.image_size)
        return preprocess_images(images, cfg)
    processor = hf_processor(spec.aspect_mode, spec.image_size, spec.vision_tower)
    return processor(images=images, return_tensors="pt")["pixel_values"]


def hf_greedy(model, tokenizer, prompt: str, images, spec, max_new_tokens: int = 32) -> list[int]:
    """Greedy tokens from transformers, with each <image> expanded as LLaVA expects."""
    config = model.config
    ids = tokenizer(prompt)["input_ids"]
    per_image = num_image_tokens(config)
    expanded: list[int] = []
    for token in ids:
        expanded.extend([token] * per_image if token == config.image_token_index else [token])
    inputs = {"input_ids": torch.tensor([expanded])}
    if images:
        inputs["pixel_values"] = hf_pixel_values(images, spec)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(expanded) :].tolist()


def hf_next_processor(config):
    """transformers' own (PIL) LLaVA-NeXT image processor for a model config."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    side = config.vision_config.image_size
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
    )


def hf_next_inputs(model, ids: list[int], images) -> dict:
    """transformers' LLaVA-NeXT inputs: its processor's pixels, and each image id expanded to
    as many ids as transformers' own model yields features for that image."""
    config = model.config
    if not images:
        return {"input_ids": torch.tensor([ids])}
    pixels = hf_next_processor(config)(images=images, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=pixels["pixel_values"],
            image_sizes=pixels["image_sizes"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output
    lengths = iter([f.shape[0] for f in features])
    expanded: list[int] = []
    for token in ids:
        expanded.extend([token] * next(lengths) if token == config.image_token_index else [token])
    return {"input_ids": torch.tensor([expanded]), **pixels}


def hf_next_greedy(model, ids: list[int], images, pad_id: int, max_new_tokens: int = 32) -> tuple[list[int], int]:
    """(greedy tokens, prompt length with images expanded) from transformers' LLaVA-NeXT."""
    inputs = hf_next_inputs(model, ids, images)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
    length = inputs["input_ids"].shape[1]
    return out[0, length:].tolist(), length

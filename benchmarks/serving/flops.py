"""Work per request, from the model's config: how much of the machine a contender uses.

A request's floating-point operations are counted from the shapes in ``config.json``:
the vision tower over each image's patches (patch embedding, attention projections,
attention scores, MLP), the projector over each image's tokens, and the LLM over every
prompt token (prefill) and every generated token (decode), its attention over the
context included, the vocabulary projection for each generated token. Norms, softmax,
activations and rotary embeddings are left out (a few percent at most). A multiply-add
counts two.

``share = req/s x FLOPs per request / measured matmul ceiling`` then says how close a
contender comes to what this machine's matrix units can do in the served dtype; the
rest goes to memory traffic, small shapes, scheduling and the front end.
"""

import json
from pathlib import Path


def _linear(tokens: float, fan_in: int, fan_out: int) -> float:
    return 2.0 * tokens * fan_in * fan_out


def vision_flops(config: dict) -> float:
    """One image (one tile) through the tower's layers that LLaVA reads, and the projector."""
    vision, text = config["vision_config"], config["text_config"]
    side, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
    width, inner = vision["hidden_size"], vision["intermediate_size"]
    tokens = (side // patch) ** 2 + 1
    layers = vision["num_hidden_layers"]
    feature = config.get("vision_feature_layer", -2)
    used = max(layers + 1 + i if i < 0 else i for i in ([feature] if isinstance(feature, int) else feature))
    per_layer = (
        _linear(tokens, width, 4 * width)  # q, k, v, o
        + 2 * 2.0 * tokens * tokens * width  # scores and weighted sum
        + _linear(tokens, width, inner) + _linear(tokens, inner, width)
    )
    embed = _linear(tokens - 1, 3 * patch * patch, width)
    hidden = text["hidden_size"]
    n_features = 1 if isinstance(feature, int) else len(feature)
    projector = _linear(tokens - 1, width * n_features, hidden) + _linear(tokens - 1, hidden, hidden)
    return embed + used * per_layer + projector


def llm_flops(config: dict, prompt_tokens: float, output_tokens: float) -> float:
    """Prefill of ``prompt_tokens`` and decode of ``output_tokens`` (each attending to the
    context so far), with the vocabulary projection for each generated token."""
    text = config["text_config"]
    hidden, inner, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    per_token = layers * (
        _linear(1, hidden, q_out + 2 * kv_out) + _linear(1, q_out, hidden) + _linear(1, hidden, 2 * inner)
        + _linear(1, inner, hidden)
    )
    total_tokens = prompt_tokens + output_tokens
    # every token attends to the ones before it: sum over positions of 2 x 2 x position x q_out
    attention = layers * 2 * 2.0 * q_out * total_tokens * (total_tokens + 1) / 2
    vocab = _linear(output_tokens, hidden, text["vocab_size"])
    return total_tokens * per_token + attention + vocab


def request_flops(model_dir: Path, prompt_tokens: float, output_tokens: float, images: float) -> float:
    """FLOPs of one request; ``prompt_tokens`` counts the image tokens (as usage reports)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return images * vision_flops(config) + llm_flops(config, prompt_tokens, output_tokens)


def ceiling_share(requests_per_s: float, flops_per_request: float, ceiling_gflops: float) -> float:
    return requests_per_s * flops_per_request / (ceiling_gflops * 1e9) if ceiling_gflops else 0.0

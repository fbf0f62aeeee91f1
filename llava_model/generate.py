"""Offline generation with vLLM's ``LLM`` over our model, from the command line.

    python -m llava_model.generate --model DIR --image photo.jpg --prompt "What is shown?"

The prompt is wrapped in LLaVA's vicuna_v1 format unless ``--raw`` is given; each
``--image`` adds one ``<image>`` placeholder in front of the question. The prompt goes to
the engine as token ids, tokenised as the model directory's config says
(``llava_model.prompt_ids``), exactly as the server does.
"""

import argparse
from pathlib import Path

from llava_model.chat_format import IMAGE, Turn, prompt
from llava_model.image_processing import ImageError, decode_image
from llava_model.prompt_ids import encode_prompt, prompt_tokenization
from llava_model.reply_text import whole_reply


def vicuna_prompt(question: str, num_images: int) -> str:
    """One user turn in vicuna_v1: the images (one per line), then the question."""
    return prompt("vicuna_v1", None, [Turn("user", f"{IMAGE}\n" * num_images + question)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llava_model.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (llava-hf layout)")
    parser.add_argument("--image", action="append", default=[], type=Path, help="image file (repeatable)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--raw", action="store_true", help="send the prompt as is (it holds its own <image>s)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="memory reserved for the KV cache")
    parser.add_argument("--eager", action="store_true", help="skip torch.compile (faster start)")
    args = parser.parse_args(argv)

    images = []
    for path in args.image:
        try:
            images.append(decode_image(path.read_bytes()))
        except (OSError, ImageError) as exc:
            parser.exit(2, f"error: {path}: {exc}\n")
    prompt = args.prompt if args.raw else vicuna_prompt(args.prompt, len(images))
    try:
        tokenization = prompt_tokenization(args.model)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: {args.model}: {exc}\n")

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        enforce_eager=args.eager,
        limit_mm_per_prompt={"image": max(len(images), 1)},
        kv_cache_memory_bytes=int(args.kv_cache_gb * 2**30),
    )
    request = {"prompt_token_ids": encode_prompt(llm.get_tokenizer(), prompt, tokenization)}
    if images:
        request["multi_modal_data"] = {"image": images}
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    output = llm.generate([request], params, use_tqdm=False)[0].outputs[0]
    print(whole_reply(llm.get_tokenizer(), output.text, output.token_ids))


if __name__ == "__main__":
    main()

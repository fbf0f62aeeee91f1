"""LLaVA's two stages on a tiny model assembled from a tiny CLIP and a tiny Llama.

What trains in each stage, the JSON log, resuming, LoRA, and the export: loadable by
transformers and by our vLLM model, whose greedy output must equal transformers'.
"""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from llava_model.chat_format import Turn, prompt
from llava_model.tiny import build_tokenizer
from train.builtin.world import make_scene
from train.builtin.world_data import WorldDataConfig, write_world_data
from train.llava.assemble import AssembleConfig, assemble
from train.llava.config import StageConfig
from train.llava.export import export
from train.llava.trainer import train_stage


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(root, assembled model dir, world data dir)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("stages")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(root / "clip")
    tokenizer = build_tokenizer(special_tokens=["<unk>", "<s>", "</s>"])  # no <image>, no <pad>: assemble adds them
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                       intermediate_size=256, num_hidden_layers=2, vocab_size=len(tokenizer),
                                       max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    model, tok, processor = assemble(AssembleConfig(vision=str(root / "clip"), llm=str(root / "llm")))
    export(model, tok, processor, root / "assembled", "plain")
    write_world_data(root / "world", WorldDataConfig(scenes=48))
    return root


def _stage(parts, name, stage, model, **kw):
    cfg = StageConfig(stage=stage, model=str(model), data=str(parts / "world" / ("captions.json" if stage == 1 else "instruct.json")),
                      image_root=str(parts / "world"), output_dir=str(parts / name),
                      chat_format="plain" if stage == 1 else "vicuna_v1", global_batch=8, per_device_batch=4,
                      max_steps=3, lr=5e-3, progress=False)
    return train_stage(replace(cfg, **kw))


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def _changed(before, after, prefix):
    names = [n for n in before if n.startswith(prefix)]
    assert names, prefix
    return {n for n in names if not torch.equal(before[n], after[n])}


def test_assemble_adds_tokens_resizes_and_keeps_pretrained_weights(parts):
    from transformers import AutoTokenizer, CLIPVisionModel

    from llava_model.weights import hub_name

    tok = AutoTokenizer.from_pretrained(parts / "assembled")
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id and tok.pad_token == "<pad>"
    config = json.loads((parts / "assembled" / "config.json").read_text())
    assert config["image_token_index"] == tok.convert_tokens_to_ids("<image>")
    w = _weights(parts / "assembled")
    emb = w["language_model.model.embed_tokens.weight"]
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tok)
    clip = CLIPVisionModel.from_pretrained(parts / "clip").state_dict()
    assert all(torch.equal(w[hub_name(f"vision_tower.{k}")], v) for k, v in clip.items())
    src = load_file(str(parts / "llm" / "model.safetensors"))
    n = src["model.embed_tokens.weight"].shape[0]
    assert torch.equal(emb[:n], src["model.embed_tokens.weight"])
    assert torch.equal(w["language_model.model.layers.1.mlp.up_proj.weight"], src["model.layers.1.mlp.up_proj.weight"])


def test_stage1_trains_only_the_projector_and_logs(parts):
    result = _stage(parts, "s1", 1, parts / "assembled")
    before, after = _weights(parts / "assembled"), _weights(parts / "s1" / "final")
    assert _changed(before, after, "multi_modal_projector.")
    assert not _changed(before, after, "vision_tower.") and not _changed(before, after, "language_model.")
    log = [json.loads(line) for line in (parts / "s1" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["samples_per_s"] > 0 for r in log)
    assert result["mismatches"] == 0 and result["final_loss"] == pytest.approx(log[-1]["loss"], rel=1e-5)
    meta = json.loads((parts / "s1" / "final" / "llava_train.json").read_text())
    assert meta["stage"] == 1 and meta["chat_format"] == "plain"
    # Trained on whole-prompt tokenisation (an assembled model), and the export says so.
    assert meta["prompt_tokenization"] == "whole"
    for model_dir in (parts / "assembled", parts / "s1" / "final"):
        assert json.loads((model_dir / "config.json").read_text())["llava_prompt_tokenization"] == "whole"


def test_stage2_trains_projector_and_llm_not_vision(parts):
    _stage(parts, "s2", 2, parts / "assembled")
    before, after = _weights(parts / "assembled"), _weights(parts / "s2" / "final")
    assert _changed(before, after, "multi_modal_projector.") and _changed(before, after, "language_model.model.layers.")
    assert not _changed(before, after, "vision_tower.")


def test_export_writes_the_chat_template_of_the_trained_format(parts):
    from transformers import AutoTokenizer

    _stage(parts, "s2_chatml", 2, parts / "assembled", chat_format="chatml", max_steps=1)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    turns = [Turn("user", "<image>\nWhat is shown?")]
    for model_dir, fmt in ((parts / "s2_chatml" / "final", "chatml"), (parts / "assembled", "plain")):
        tok = AutoTokenizer.from_pretrained(model_dir)
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == prompt(fmt, "Be brief.", turns), fmt
    assert rendered == "<image>"  # plain: a stage-1 model is shown the image alone, as it was trained


def test_resume_continues_exactly_where_it_stopped(parts):
    _stage(parts, "straight", 2, parts / "assembled", max_steps=4)
    _stage(parts, "resumed", 2, parts / "assembled", max_steps=4, save_every=2)
    # Pretend the run died after step 2: drop what came later and run again.
    import shutil

    shutil.rmtree(parts / "resumed" / "checkpoint-4")
    shutil.rmtree(parts / "resumed" / "final")
    _stage(parts, "resumed", 2, parts / "assembled", max_steps=4, save_every=2)
    a, b = _weights(parts / "straight" / "final"), _weights(parts / "resumed" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (parts / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4]  # the second run logged only steps 3 and 4


def _hf_greedy(model_dir, text, image, n):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from llava_model.image_processing import ImageProcessingConfig, preprocess_images
    from llava_model.vision import num_image_tokens

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = ImageProcessingConfig.from_hf_dict(json.loads((model_dir / "preprocessor_config.json").read_text()),
                                             model.config.vision_config.image_size)
    ids = []
    for t in tok(text)["input_ids"]:
        ids += [t] * num_image_tokens(model.config) if t == model.config.image_token_index else [t]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), pixel_values=preprocess_images([image], cfg),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, len(ids):].tolist()


def _vllm_greedy(llm, text, image, n, lora=None):
    from vllm import SamplingParams

    out = llm.generate([{"prompt": text, "multi_modal_data": {"image": image}}],
                       SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0), lora_request=lora, use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


PROMPT = prompt("vicuna_v1", None, [Turn("user", "<image>\nWhat colour is the circle?")])


def test_export_serves_in_vllm_exactly_as_in_transformers(parts, engine_factory):
    model_dir = parts / "s2" / "final"
    image = make_scene(1_000_003).render()
    llm = engine_factory(model_dir)
    assert _vllm_greedy(llm, PROMPT, image, 16) == _hf_greedy(model_dir, PROMPT, image, 16)


def test_lora_stage2_exports_merged_model_and_an_adapter_vllm_loads(parts, engine_factory):
    from vllm.lora.request import LoRARequest

    _stage(parts, "lora", 2, parts / "assembled", lora_r=8, lora_alpha=16, lr=2e-2)
    out = parts / "lora" / "final"
    adapter = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) >= {"q_proj", "v_proj", "down_proj"}
    before, merged, base = _weights(parts / "assembled"), _weights(out), _weights(out / "lora" / "base")
    assert _changed(before, merged, "language_model.model.layers.")  # merged adapter changed the LLM
    assert not _changed(before, base, "language_model.")  # the base keeps the LLM as it was
    assert _changed(before, base, "multi_modal_projector.")  # with the trained projector
    image = make_scene(1_000_004).render()
    llm = engine_factory(out / "lora" / "base", enable_lora=True, max_lora_rank=8)
    with_adapter = _vllm_greedy(llm, PROMPT, image, 12, LoRARequest("trained", 1, str(out / "lora")))
    assert with_adapter == _hf_greedy(out, PROMPT, image, 12)


def test_bf16_on_a_cpu_that_runs_it_slower_than_fp32_is_warned_about():
    from train.llava.trainer import slow_bf16_warning

    warning = slow_bf16_warning({"bfloat16": 16.0, "float32": 128.0}.get)  # measured on one of ours (AVX2 only)
    assert warning and "--no-bf16" in warning and "16 GFLOP/s" in warning
    assert slow_bf16_warning({"bfloat16": 800.0, "float32": 300.0}.get) is None  # AMX

"""The recipe's resumable steps: a finished step is reused only when its settings match."""

from train.builtin.recipe import (
    PRESETS,
    _fingerprint,
    _pixels,
    _step,
    add_bench,
    build_record,
    compare_records,
    read_record,
)


def test_step_reused_with_same_settings_and_redone_when_they_change(tmp_path):
    calls = []

    def make(path):
        calls.append(path.name)
        (path / "out.txt").write_text(str(len(calls)))
        return {"n": len(calls)}

    log: dict = {}
    first = _step("a", tmp_path / "a", log, make, _fingerprint({"steps": 1}))
    assert calls == ["a"] and log["a"]["n"] == 1 and not log["a"].get("skipped")
    assert _step("a", tmp_path / "a", log, make, first) == first
    assert calls == ["a"] and log["a"]["skipped"] and log["a"]["n"] == 1
    changed = _fingerprint({"steps": 2})
    assert changed != first
    _step("a", tmp_path / "a", log, make, changed)
    assert calls == ["a", "a"] and (tmp_path / "a" / "out.txt").read_text() == "2"
    # a downstream step's fingerprint carries its inputs', so a changed upstream redoes it too
    assert _fingerprint(first, {"lr": 1}) != _fingerprint(changed, {"lr": 1})


def test_unfinished_step_is_redone_from_scratch(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "half-written.bin").write_text("x")  # killed before it marked itself done
    log: dict = {}
    _step("a", tmp_path / "a", log, lambda p: {}, _fingerprint(1))
    assert not (tmp_path / "a" / "half-written.bin").exists()
    assert (tmp_path / "a" / ".done").is_file()


def test_interrupted_step_keeps_its_folder_to_resume_but_not_another_steps(tmp_path):
    fp = _fingerprint({"steps": 5})

    def killed(path):
        (path / "checkpoint-250").mkdir()
        raise KeyboardInterrupt  # the build stopped half-way through this step

    log: dict = {}
    try:
        _step("s", tmp_path / "s", log, killed, fp)
    except KeyboardInterrupt:
        pass
    seen = []
    _step("s", tmp_path / "s", log, lambda p: seen.append(sorted(x.name for x in p.iterdir())), fp)
    assert "checkpoint-250" in seen[0]  # the same settings resume from the checkpoint
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".started").write_text(_fingerprint({"steps": 6}))
    (tmp_path / "t" / "checkpoint-250").mkdir()
    seen.clear()
    _step("t", tmp_path / "t", log, lambda p: seen.append(sorted(x.name for x in p.iterdir())), fp)
    assert "checkpoint-250" not in seen[0]  # other settings' checkpoint is not resumed from


def _record(fingerprint="abc", main=0.9, varied=0.8):
    return {"recipe_fingerprint": fingerprint, "seeds": {"clip": 0},
            "shapes_bench": {"main": {"accuracy": main}, "varied": {"accuracy": varied}}}


def test_compare_records_names_what_differs():
    assert compare_records(_record(), _record(main=0.91, varied=0.78)) == []
    problems = compare_records(_record(fingerprint="def", main=0.8), _record())
    assert len(problems) == 2
    assert "recipe fingerprint def" in problems[0] and "90.0%" in problems[1] and "main" in problems[1]
    missing = _record()
    del missing["shapes_bench"]["varied"]
    assert compare_records(missing, _record()) == ["shapes-bench varied: no result in the rebuild's record"]


def test_build_record_and_bench_results_land_in_the_model_folder(tmp_path):
    import json

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    log = {name: {"fingerprint": f"fp-{name}", "seconds": 2.0} for name in ("world", "tokenizer", "stage2")}
    log["tokenizer"]["skipped"] = True
    record = build_record(PRESETS["ci"], log, tmp_path)
    assert record["recipe_fingerprint"] == "fp-stage2" and record["build_seconds"] == 6.0
    assert record["resumed_steps"] == ["tokenizer"] and record["machine"]["cores"] >= 1
    assert len(record["weights_sha256"]) == 64
    (tmp_path / "build_log.json").write_text(json.dumps({"record": record}))
    add_bench(tmp_path, "main", {"accuracy": 0.5, "questions": 4, "scenes": 1,
                                 "by_kind": {"count": {"accuracy": 0.5, "n": 4}}})
    assert read_record(tmp_path)["shapes_bench"]["main"] == {"accuracy": 0.5, "questions": 4, "scenes": 1,
                                                              "by_kind": {"count": 0.5}}


def test_check_refuses_to_compare_a_model_with_itself(tmp_path, capsys):
    import pytest

    from train.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["default-model", "--out", str(tmp_path), "--check", str(tmp_path), "--no-bench"])
    assert exc.value.code == 2 and "give --out another folder" in capsys.readouterr().err


def test_world_images_killed_mid_write_are_redrawn_on_the_rerun(tmp_path, monkeypatch):
    from PIL import Image

    from train.builtin.world_data import WorldDataConfig, write_world_data

    real_save, calls = Image.Image.save, []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # the build is killed while the third picture is half on disk
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    cfg = WorldDataConfig(scenes=5)
    monkeypatch.setattr(Image.Image, "save", dying_save)
    try:
        write_world_data(tmp_path, cfg)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(Image.Image, "save", real_save)
    write_world_data(tmp_path, cfg)  # the rerun (the step keeps its folder to resume)
    for seed in range(5):
        with Image.open(tmp_path / "images" / f"scene-{seed}.png") as image:
            image.load()


def test_device_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    import pytest
    import torch

    from train.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    with pytest.raises(SystemExit) as exc:
        main(["default-model", "--out", str(tmp_path / "m"), "--device", "cuda", "--no-bench"])
    assert exc.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "m.work").exists()


def test_clip_pictures_are_drawn_a_chunk_at_a_time_with_the_same_pixels():
    # The default CLIP step draws 44,000 pictures: held all at once they took 14 GB.
    import gc
    import weakref

    from train.builtin.world import make_scene

    drawn, most = [], [0]  # weak references to every picture drawn; the most alive at once

    class Counted:
        def __init__(self, seed):
            self.scene = make_scene(seed)

        def render(self):
            gc.collect()
            image = self.scene.render()
            drawn.append(weakref.ref(image))
            most[0] = max(most[0], sum(r() is not None for r in drawn))
            return image

    seeds = range(40)
    pixels = _pixels([Counted(s) for s in seeds], 96, chunk=8)
    assert most[0] <= 8, most[0]
    whole = _pixels([make_scene(s) for s in seeds], 96, chunk=len(seeds))
    assert pixels.shape == (40, 3, 96, 96) and pixels.dtype == whole.dtype
    assert (pixels.view(-1) == whole.view(-1)).all()


def test_precision_auto_runs_fp32_where_this_cpu_runs_bf16_slower_and_keeps_the_recipe_elsewhere():
    import pytest

    from train.builtin.recipe import RecipeConfig, resolve_precision, with_bf16

    slow_bf16 = {"bfloat16": 16.0, "float32": 128.0}  # an AVX2-only CPU (measured on one of ours)
    bf16, why = resolve_precision(RecipeConfig(), slow_bf16.get)
    assert bf16 is False and "fp32" in why and "bf16 16," in why
    steps = with_bf16(PRESETS["default"], bf16)
    assert not any(s.bf16 for s in (steps.clip, steps.lm, steps.stage1, steps.stage2))
    assert resolve_precision(RecipeConfig(), {"bfloat16": 800.0, "float32": 300.0}.get)[0] is None  # AMX
    assert with_bf16(PRESETS["default"], None) == PRESETS["default"]

    def no_measuring(dtype):
        raise AssertionError("measured although the choice needs no measurement")

    assert resolve_precision(RecipeConfig(device="cuda"), no_measuring)[0] is None
    assert resolve_precision(RecipeConfig(precision="fp32"), no_measuring)[0] is False
    assert resolve_precision(RecipeConfig(precision="bf16"), no_measuring)[0] is True
    with pytest.raises(ValueError, match="expected auto, bf16 or fp32"):
        resolve_precision(RecipeConfig(precision="fp16"), no_measuring)


def test_build_trains_in_the_resolved_precision_under_the_recipes_fingerprints(tmp_path, monkeypatch):
    """fp32 on a slow-bf16 CPU reaches the steps, and a step done in bf16 elsewhere is still reused."""
    import dataclasses

    import pytest

    from train.builtin import recipe
    from train.builtin.world_data import WorldDataConfig

    seen = []

    def stop_at_clip(pixels, captions, tokenizer, cfg, *args, **kwargs):
        seen.append(cfg.bf16)
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "train_clip", stop_at_clip)
    monkeypatch.setattr(recipe, "resolve_precision", lambda cfg: (False, "fp32 (test)"))
    cfg = dataclasses.replace(PRESETS["ci"], world=WorldDataConfig(scenes=4), progress=False,
                              clip=dataclasses.replace(PRESETS["ci"].clip, scenes=4))
    with pytest.raises(KeyboardInterrupt):
        recipe.build(tmp_path / "m", cfg, tmp_path / "work")
    assert seen == [False] and cfg.clip.bf16  # the recipe says bf16; this machine trains in fp32
    fp_tok = recipe._fingerprint(recipe._fingerprint(cfg.world), cfg.vocab_size)
    assert recipe._finished(tmp_path / "work" / "tokenizer", fp_tok) is not None
    # the CLIP step is known by the recipe's settings (bf16 on), so a build resumed on a machine
    # that runs bf16 fast picks up where this one stopped
    assert (tmp_path / "work" / "clip" / ".started").read_text() == recipe._fingerprint(fp_tok, cfg.clip)

"""COCO annotations -> symbolic contexts: normalised boxes, and bad input named by record."""

import json

import pytest

from train.builtin.world import make_scene
from train.datagen.coco import AnnotationError, load_coco
from train.datagen.world_source import world_contexts


def coco_files(tmp_path, *, images=None, captions=None, instances=None, categories=None):
    images = images if images is not None else [
        {"id": 42, "file_name": "000042.jpg", "width": 640, "height": 480},
        {"id": 7, "file_name": "000007.jpg", "width": 200, "height": 100},
    ]
    captions = captions if captions is not None else [
        {"id": 1, "image_id": 42, "caption": "A dog  sits next to a bicycle. "},
        {"id": 2, "image_id": 42, "caption": "A bike and a dog on a street."},
        {"id": 3, "image_id": 7, "caption": "A cat on a sofa."},
    ]
    instances = instances if instances is not None else [
        {"id": 10, "image_id": 42, "category_id": 18, "bbox": [64, 48, 128, 96]},
        {"id": 11, "image_id": 42, "category_id": 2, "bbox": [320, 240, 320, 240]},
        {"id": 12, "image_id": 7, "category_id": 17, "bbox": [0, 0, 100, 50]},
    ]
    categories = categories if categories is not None else [
        {"id": 2, "name": "bicycle"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    cap, inst = tmp_path / "captions.json", tmp_path / "instances.json"
    cap.write_text(json.dumps({"images": images, "annotations": captions}))
    inst.write_text(json.dumps({"images": images, "annotations": instances, "categories": categories}))
    return cap, inst


def test_boxes_are_normalised_corners_and_captions_grouped(tmp_path):
    cap, inst = coco_files(tmp_path)
    loaded = load_coco(cap, inst, image_prefix="train2014/")
    assert [c.image_id for c in loaded.contexts] == ["7", "42"]  # numeric id order
    ctx = loaded.contexts[1]
    assert ctx.image == "train2014/000042.jpg"
    assert ctx.captions == ("A dog sits next to a bicycle.", "A bike and a dog on a street.")
    assert [(o.category, o.box) for o in ctx.objects] == [
        ("dog", (0.1, 0.1, 0.3, 0.3)), ("bicycle", (0.5, 0.5, 1.0, 1.0))]
    assert ctx.text().splitlines() == [
        "A dog sits next to a bicycle.", "A bike and a dog on a street.", "",
        "dog: [0.100, 0.100, 0.300, 0.300]", "bicycle: [0.500, 0.500, 1.000, 1.000]"]
    assert loaded.contexts[0].objects[0].box == (0.0, 0.0, 0.5, 0.5)  # 200x100 image


def test_captions_only_gives_contexts_without_objects(tmp_path):
    cap, _ = coco_files(tmp_path)
    loaded = load_coco(cap)
    assert all(c.objects == () for c in loaded.contexts) and len(loaded.contexts) == 2


@pytest.mark.parametrize("change, expected", [
    ({"captions": [{"id": 1, "image_id": 42, "caption": "A dog."}]}, r"image 7 \(000007.jpg\): no captions"),
    ({"captions": [{"id": 1, "image_id": 42, "caption": "  "},
                   {"id": 3, "image_id": 7, "caption": "A cat."}]},
     r"annotation 1 \(image 42\): empty or missing caption"),
    ({"instances": [{"id": 10, "image_id": 42, "category_id": 18, "bbox": [5, 5, 0, 10]}]},
     r"instances.json: annotation 10 \(image 42\): empty box \[5, 5, 0, 10\]"),
    ({"instances": [{"id": 10, "image_id": 42, "category_id": 18, "bbox": []}]},
     r"annotation 10 \(image 42\): bbox must be 4 numbers"),
    ({"instances": [{"id": 10, "image_id": 42, "category_id": 18, "bbox": [600, 10, 100, 10]}]},
     r"annotation 10 \(image 42\): box \[600, 10, 100, 10\] lies outside the 640x480 image"),
    ({"instances": [{"id": 10, "image_id": 42, "category_id": 99, "bbox": [1, 1, 5, 5]}]},
     r"annotation 10 \(image 42\): unknown category_id 99"),
    ({"instances": [{"id": 10, "image_id": 5, "category_id": 18, "bbox": [1, 1, 5, 5]}]},
     r"annotation 10: image_id 5 has no captions"),
    ({"images": [{"id": 42, "file_name": "a.jpg", "width": 0, "height": 480},
                 {"id": 7, "file_name": "b.jpg", "width": 200, "height": 100}]},
     r"annotation 10 \(image 42\): image has no positive width/height"),
])
def test_bad_records_are_named(tmp_path, change, expected):
    cap, inst = coco_files(tmp_path, **change)
    with pytest.raises(AnnotationError, match=expected):
        load_coco(cap, inst)


def test_skip_mode_leaves_out_only_the_bad_image(tmp_path):
    cap, inst = coco_files(tmp_path, instances=[
        {"id": 10, "image_id": 42, "category_id": 18, "bbox": [5, 5, 0, 10]},
        {"id": 12, "image_id": 7, "category_id": 17, "bbox": [0, 0, 100, 50]}])
    loaded = load_coco(cap, inst, on_error="skip")
    assert [c.image_id for c in loaded.contexts] == ["7"]
    assert len(loaded.skipped) == 1 and loaded.skipped[0].image_id == 42
    assert "empty box" in loaded.skipped[0].message


def test_all_problems_are_listed_at_once(tmp_path):
    cap, inst = coco_files(tmp_path, instances=[
        {"id": n, "image_id": 42, "category_id": 99, "bbox": [1, 1, 5, 5]} for n in range(15)])
    with pytest.raises(AnnotationError, match=r"15 problem\(s\)") as err:
        load_coco(cap, inst)
    assert "and 5 more" in str(err.value) and "annotation 0 (image 42)" in str(err.value)


def test_broken_and_misshapen_files(tmp_path):
    cap, inst = coco_files(tmp_path)
    inst.write_text('{"annotations": [ {"id": 1,, }')
    with pytest.raises(AnnotationError, match=r"instances.json: not valid JSON: .* line 1 column"):
        load_coco(cap, inst)
    cap.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(AnnotationError, match=r"captions.json: expected a COCO object"):
        load_coco(cap)
    with pytest.raises(AnnotationError, match=r"missing.json: cannot read"):
        load_coco(tmp_path / "missing.json")


def test_world_contexts_render_and_match_the_scenes(tmp_path):
    contexts = world_contexts(3, first_seed=5, render_dir=tmp_path)
    assert [c.image_id for c in contexts] == ["scene-5", "scene-6", "scene-7"]
    assert all((tmp_path / c.image).is_file() for c in contexts)
    scene = make_scene(6)
    assert [o.category for o in contexts[1].objects] == [o.category for o in scene.objects]
    assert contexts[1].captions == tuple(scene.captions())


def test_world_contexts_refuse_the_held_out_bench_seeds():
    from train.builtin.shapes_bench import FIRST_SEED

    with pytest.raises(ValueError, match="held out for shapes-bench"):
        world_contexts(2, first_seed=FIRST_SEED - 1)

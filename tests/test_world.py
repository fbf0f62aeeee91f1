"""The synthetic world: deterministic scenes, boxes that match the pixels, exact answers."""

import numpy as np
import pytest

from train.builtin.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_STYLE,
    VARIED,
    Scene,
    WorldConfig,
    make_scene,
    questions,
    relation,
)


def test_same_seed_same_scene_and_pixels():
    a, b = make_scene(7), make_scene(7)
    assert a == b
    assert np.array_equal(np.asarray(a.render()), np.asarray(b.render()))
    assert make_scene(8) != a


@pytest.mark.parametrize("seed", range(40))
def test_boxes_are_normalised_disjoint_and_drawn(seed):
    scene = make_scene(seed)
    pixels = np.asarray(scene.render())
    side = scene.config.image_size
    assert 1 <= len(scene.objects) <= 4
    assert len({o.category for o in scene.objects}) == len(scene.objects)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.box
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        cx, cy = obj.centre
        # every shape covers its box centre (the triangle too: its centre is inside)
        assert tuple(pixels[int(cy * side), int(cx * side)]) == COLOURS[obj.colour]
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]


def test_symbolic_form_and_captions():
    scene = make_scene(3, WorldConfig(min_objects=2, max_objects=2))
    lines = scene.symbolic().splitlines()
    assert len(lines) == 2
    for line, obj in zip(lines, scene.objects):
        assert line.startswith(f"{obj.category}: [") and line.endswith("]")
        assert [float(v) for v in line.split("[")[1].rstrip("]").split(",")] == pytest.approx(list(obj.box))
    captions = scene.captions()
    assert all(obj.category in " ".join(captions) for obj in scene.objects)
    pairs = scene.clear_pairs()
    assert len(captions) == 2 + bool(pairs)
    if pairs:
        assert captions[2] == f"The {pairs[0][0].category} is {relation(*pairs[0])} the {pairs[0][1].category}."
    layout = scene.layout_captions()
    for text in layout:  # every object with its place, size, colour and shape
        assert all(f"{o.place}: a {o.size} {o.category}" in text.lower() for o in scene.objects)
    assert sorted(layout[0].lower().split("; ")) == sorted(layout[1].lower().split("; "))


@pytest.mark.parametrize("seed", range(40))
def test_grid_layout_one_object_per_cell_and_clear_relations(seed):
    scene = make_scene(seed)
    cells = {(int(o.centre[0] * 3), int(o.centre[1] * 3)) for o in scene.objects}
    assert len(cells) == len(scene.objects)
    for obj in scene.objects:  # each box lies inside its cell
        col, row = int(obj.centre[0] * 3), int(obj.centre[1] * 3)
        assert col / 3 <= obj.box[0] and obj.box[2] <= (col + 1) / 3 + 1e-9
        assert row / 3 <= obj.box[1] and obj.box[3] <= (row + 1) / 3 + 1e-9
    for q in questions(scene):
        if q.kind == "relation":
            (ax, ay), (bx, by) = [o.centre for o in scene.objects if o.category in q.text]
            assert abs(abs(ax - bx) - abs(ay - by)) >= 0.1


@pytest.mark.parametrize("seed", range(60))
def test_question_answers_follow_from_the_objects(seed):
    scene: Scene = make_scene(seed)
    for q in questions(scene):
        if q.kind == "count" and q.text.startswith("How many shapes"):
            assert q.answer == str(len(scene.objects))
        elif q.kind == "colour":
            shape = q.text.split("the ")[1].split("?")[0]
            assert [o.colour for o in scene.objects if o.shape == shape] == [q.answer]
        elif q.kind == "shape":
            colour = q.text.split("is ")[1].split("?")[0]
            assert [o.shape for o in scene.objects if o.colour == colour] == [q.answer]
        elif q.kind == "exists":
            probe = q.text.split("a ", 1)[1].split(" in the image")[0]
            assert q.answer == ("yes" if probe in {o.category for o in scene.objects} else "no")
        elif q.kind == "relation":
            first = q.text.split("Where is the ")[1].split(" relative")[0]
            second = q.text.split("relative to the ")[1].split("?")[0]
            by_name = {o.category: o for o in scene.objects}
            assert q.answer == relation(by_name[first], by_name[second])
            (ax, ay), (bx, by) = by_name[first].centre, by_name[second].centre
            if q.answer == "left of":
                assert ax < bx
            elif q.answer == "above":
                assert ay < by
        else:
            assert q.kind == "count" and int(q.answer) >= 2


def test_canonical_world_is_unchanged_by_the_drawing_options():
    # shapes-bench's main split: the varied style's extra random draws must not shift it
    scene = make_scene(1_000_007)
    assert scene.background_rgb is None and not scene.antialias and all(o.rgb is None for o in scene.objects)
    assert WorldConfig().canonical and not VARIED.canonical
    explicit = WorldConfig(backgrounds=tuple(sorted(BACKGROUNDS)), sizes=None, jitter=0)
    assert make_scene(1_000_007, explicit) == scene


@pytest.mark.parametrize("style", [VARIED, HELD_OUT_STYLE])
def test_varied_styles_stay_answerable(style):
    smooth = 0
    for seed in range(1_000_000, 1_000_040):
        scene = make_scene(seed, style)
        assert scene.background in style.backgrounds
        for obj in scene.objects:
            side = obj.box[2] - obj.box[0]
            assert style.sizes[0] - 1e-3 <= side <= style.sizes[1] + 1e-3
            row, col = obj.cell
            assert col / 3 <= obj.box[0] and obj.box[2] <= (col + 1) / 3 + 1e-3  # inside its own cell
            assert row / 3 <= obj.box[1] and obj.box[3] <= (row + 1) / 3 + 1e-3
            assert sum((a - b) ** 2 for a, b in zip(obj.rgb, scene.background_rgb)) ** 0.5 >= style.min_contrast - 40
        image = scene.render()
        assert image.size == (style.image_size, style.image_size)
        smooth += scene.antialias and len(image.getcolors(1 << 16)) > 20  # blended edge colours
        assert questions(scene)  # the same questions apply
    assert smooth >= (10 if style.antialias == 1.0 else 5)


def test_held_out_backgrounds_are_never_trained_on():
    assert not set(HELD_OUT_STYLE.backgrounds) & set(VARIED.backgrounds)
    assert not set(HELD_OUT_STYLE.backgrounds) & set(WorldConfig().backgrounds)
    with pytest.raises(ValueError, match="unknown backgrounds"):
        WorldConfig(backgrounds=("plaid",))

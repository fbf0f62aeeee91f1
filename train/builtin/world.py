"""A synthetic visual world with exact ground truth (for the built-in default model).

Each scene is a few flat shapes on a plain background, drawn deterministically from
a seed. Alongside the picture, a scene gives what LLaVA's text-only teacher sees:
several captions and every object as ``category: [x1, y1, x2, y2]`` with coordinates
normalised to 0-1; and questions with exact answers (colour, shape, count, relative
position, existence) for shapes-bench.
"""

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from train.builtin.symbolic import box_relation, box_third, relation_is_clear

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {"grey": (128, 128, 128), "beige": (225, 210, 180), "teal": (40, 120, 130), "navy": (30, 40, 80)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.2, "large": 0.28}  # side of the bounding box, as a fraction of the image
PLACES = (("top left", "top", "top right"), ("left", "centre", "right"), ("bottom left", "bottom", "bottom right"))


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 224
    min_objects: int = 1
    max_objects: int = 4
    grid: int = 3  # > 0: each object inside its own cell of a grid x grid layout; 0: anywhere
    max_overlap: float = 0.0  # free placement: largest allowed intersection-over-smaller-box


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in 0-1

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def cell(self) -> tuple[int, int]:
        """Row and column of the third of the image its centre lies in."""
        return box_third(self.box)

    @property
    def place(self) -> str:
        row, col = self.cell
        return PLACES[row][col]


@dataclass(frozen=True)
class Scene:
    seed: int
    background: str
    objects: tuple[SceneObject, ...]
    config: WorldConfig = field(default_factory=WorldConfig)

    def render(self) -> Image.Image:
        side = self.config.image_size
        image = Image.new("RGB", (side, side), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            x1, y1, x2, y2 = (round(v * side) for v in obj.box)
            colour = COLOURS[obj.colour]
            if obj.shape == "circle":
                draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
            elif obj.shape == "square":
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
            else:
                draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=colour)
        return image

    def symbolic(self) -> str:
        """The teacher's view: one ``category: [x1, y1, x2, y2]`` line per object."""
        return "\n".join(f"{o.category}: [{', '.join(f'{v:.3f}' for v in o.box)}]" for o in self.objects)

    def clear_pairs(self) -> list[tuple["SceneObject", "SceneObject"]]:
        """Ordered pairs of objects whose relative position is unambiguous."""
        return [(a, b) for a in self.objects for b in self.objects
                if a is not b and relation_is_clear(a.box, b.box)]

    def captions(self) -> list[str]:
        names = [f"a {o.size} {o.category}" for o in self.objects]
        listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        count = len(self.objects)
        noun = "shape" if count == 1 else "shapes"
        out = [
            f"{listing[0].upper()}{listing[1:]} on a {self.background} background.",
            f"A picture of {count} {noun} on {self.background}: {listing}.",
        ]
        pairs = self.clear_pairs()
        if pairs:
            a, b = pairs[0]
            out.append(f"The {a.category} is {relation(a, b)} the {b.category}.")
        return out

    def layout_captions(self) -> list[str]:
        """Captions that pin down every object: place, size, colour and shape (reading order,
        then a seeded shuffle). Contrastive training on these makes the vision tower keep
        what sits where, which near-twin scenes differ in."""
        ordered = sorted(self.objects, key=lambda o: o.cell)
        shuffled = list(ordered)
        random.Random(self.seed).shuffle(shuffled)

        def text(objs) -> str:
            line = "; ".join(f"{o.place}: a {o.size} {o.category}" for o in objs) + f"; on {self.background}."
            return line[0].upper() + line[1:]
        return [text(ordered), text(shuffled)]


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis where they differ most."""
    return box_relation(a.box, b.box)


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def make_scene(seed: int, config: WorldConfig = WorldConfig()) -> Scene:
    """The scene of ``seed``: same seed, same scene, on any machine."""
    rng = random.Random(seed)
    background = rng.choice(sorted(BACKGROUNDS))
    count = rng.randint(config.min_objects, config.max_objects)
    objects: list[SceneObject] = []
    used: set[tuple[str, str]] = set()
    attempts = 0
    cells = rng.sample(range(config.grid * config.grid), config.grid * config.grid) if config.grid else []
    while len(objects) < count and attempts < 200:
        attempts += 1
        shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        if (shape, colour) in used:  # each category at most once: questions stay unambiguous
            continue
        size = rng.choice(sorted(SIZES))
        side = SIZES[size]
        if config.grid:
            cell = 1 / config.grid
            row, col = divmod(cells[len(objects)], config.grid)
            x1 = col * cell + rng.uniform(0.02, cell - side - 0.02)
            y1 = row * cell + rng.uniform(0.02, cell - side - 0.02)
        else:
            x1, y1 = rng.uniform(0.02, 0.98 - side), rng.uniform(0.02, 0.98 - side)
        box = (round(x1, 3), round(y1, 3), round(x1 + side, 3), round(y1 + side, 3))
        if any(_overlap(box, o.box) > config.max_overlap for o in objects):
            continue
        objects.append(SceneObject(shape, colour, size, box))
        used.add((shape, colour))
    return Scene(seed, background, tuple(objects), config)


@dataclass(frozen=True)
class Question:
    kind: str  # colour | shape | count | relation | exists
    text: str
    answer: str  # exact, lower case


def _attribute_question(target: SceneObject, objs: list[SceneObject]) -> Question:
    """Ask the colour of a shape, or the shape of a colour, whichever is unambiguous."""
    same_shape = sum(o.shape == target.shape for o in objs)
    if same_shape == 1:
        return Question("colour", f"What colour is the {target.shape}? Answer with one word.", target.colour)
    if sum(o.colour == target.colour for o in objs) == 1:
        return Question("shape", f"What shape is {target.colour}? Answer with one word.", target.shape)
    return Question("count", f"How many {target.shape}s are there? Answer with a number.", str(same_shape))


def questions(scene: Scene, seed: int | None = None) -> list[Question]:
    """Questions about ``scene`` whose answers follow exactly from its objects."""
    rng = random.Random(scene.seed if seed is None else seed)
    objs = list(scene.objects)
    out = [Question("count", "How many shapes are in the image? Answer with a number.", str(len(objs)))]
    out.append(_attribute_question(rng.choice(objs), objs))
    present = rng.random() < 0.5
    if present:
        probe = rng.choice(objs).category
    else:
        absent = [f"{c} {s}" for c in sorted(COLOURS) for s in SHAPES if f"{c} {s}" not in {o.category for o in objs}]
        probe = rng.choice(absent)
    out.append(Question("exists", f"Is there a {probe} in the image? Answer yes or no.", "yes" if present else "no"))
    pairs = scene.clear_pairs()
    if pairs:
        a, b = rng.choice(pairs)
        out.append(Question("relation", f"Where is the {a.category} relative to the {b.category}? "
                                        "Answer left of, right of, above or below.", relation(a, b)))
    return out


def variants(scene: Scene, rng: random.Random, reshapes: int = 1) -> list[Scene]:
    """Near-twins of ``scene`` for contrastive training: other shapes (``reshapes`` times),
    colours moved to other objects, two objects trading places. Put in one batch with the
    original, they are the negatives that make a contrastive model see shape, binding and
    position, not only which colours are present."""
    objs = list(scene.objects)
    out = []
    for _ in range(reshapes):
        used = {o.category for o in objs}
        reshaped = []
        for o in objs:
            options = [s for s in SHAPES if s != o.shape and f"{o.colour} {s}" not in used]
            new = rng.choice(options) if options else o.shape
            used.add(f"{o.colour} {new}")
            reshaped.append(SceneObject(new, o.colour, o.size, o.box))
        out.append(Scene(scene.seed, scene.background, tuple(reshaped), scene.config))
    if len(objs) >= 2:
        colours = [o.colour for o in objs]
        moved = colours[1:] + colours[:1]  # every object takes the next one's colour
        recoloured = [SceneObject(o.shape, c, o.size, o.box) for o, c in zip(objs, moved, strict=True)]
        if len({o.category for o in recoloured}) == len(objs) and moved != colours:
            out.append(Scene(scene.seed, scene.background, tuple(recoloured), scene.config))
        i, j = rng.sample(range(len(objs)), 2)
        swapped = list(objs)
        swapped[i], swapped[j] = _moved(objs[i], objs[j].centre), _moved(objs[j], objs[i].centre)
        out.append(Scene(scene.seed, scene.background, tuple(swapped), scene.config))
    return out


def _moved(obj: SceneObject, centre: tuple[float, float]) -> SceneObject:
    half = (obj.box[2] - obj.box[0]) / 2
    x = min(max(centre[0], half), 1 - half)
    y = min(max(centre[1], half), 1 - half)
    return SceneObject(obj.shape, obj.colour, obj.size, (round(x - half, 3), round(y - half, 3),
                                                        round(x + half, 3), round(y + half, 3)))

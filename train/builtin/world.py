"""A synthetic visual world with exact ground truth (for the built-in default model).

Each scene is a few flat shapes on a plain background, drawn deterministically from
a seed. Alongside the picture, a scene gives what LLaVA's text-only teacher sees:
several captions and every object as ``category: [x1, y1, x2, y2]`` with coordinates
normalised to 0-1; and questions with exact answers (colour, shape, count, relative
position, existence) for shapes-bench.
"""

import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

from train.builtin.symbolic import box_relation, box_third, relation_is_clear

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {"grey": (128, 128, 128), "beige": (225, 210, 180), "teal": (40, 120, 130), "navy": (30, 40, 80)}
# Backgrounds of the varied drawing style (training), and ones no training scene uses (the
# robustness split of shapes-bench asks about scenes on those).
MORE_BACKGROUNDS = {"white": (250, 250, 250), "silver": (190, 190, 195), "pink": (240, 185, 200),
                    "forest": (30, 75, 45)}
HELD_OUT_BACKGROUNDS = {"lavender": (205, 195, 235), "brown": (105, 70, 45), "mint": (185, 230, 205),
                        "slate": (70, 80, 95)}
ALL_BACKGROUNDS = BACKGROUNDS | MORE_BACKGROUNDS | HELD_OUT_BACKGROUNDS
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
    # Drawing style. The defaults are the canonical world (shapes-bench's main split): four
    # backgrounds, two sizes, exact colours, hard edges. The varied style draws the same kinds
    # of scene less regularly, so a model trained on it does not depend on how they are drawn.
    backgrounds: tuple[str, ...] = tuple(sorted(BACKGROUNDS))
    sizes: tuple[float, float] | None = None  # (lo, hi): a side drawn uniformly; None: SIZES
    jitter: int = 0  # each colour channel of objects and background moved by up to this much
    antialias: float = 0.0  # odds that a scene is drawn with smooth edges (4x supersampled)
    min_contrast: float = 0.0  # no object colour closer than this (RGB distance) to the background
    margin: float = 0.02  # an object's least distance to its cell's border (grid layout)

    def __post_init__(self) -> None:
        unknown = [b for b in self.backgrounds if b not in ALL_BACKGROUNDS]
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown backgrounds {unknown}; known: {sorted(ALL_BACKGROUNDS)}")
        if self.sizes is not None and not 0.05 <= self.sizes[0] <= self.sizes[1] <= 1 / max(self.grid, 1):
            raise ValueError(f"sizes {self.sizes} must lie within (0.05, one grid cell)")

    @property
    def canonical(self) -> bool:
        return self == WorldConfig(**{k: getattr(self, k) for k in ("image_size", "min_objects", "max_objects",
                                                                   "grid", "max_overlap")})


# The varied drawing style the built-in model trains on, and the held-out style of the
# robustness split (other backgrounds, a wider range of sizes, smooth edges, off-centre).
VARIED = WorldConfig(backgrounds=tuple(sorted(BACKGROUNDS | MORE_BACKGROUNDS)), sizes=(0.16, 0.30), jitter=15,
                     antialias=0.5, min_contrast=70.0, margin=0.01)
HELD_OUT_STYLE = WorldConfig(backgrounds=tuple(sorted(HELD_OUT_BACKGROUNDS)), sizes=(0.15, 0.31), jitter=20,
                             antialias=1.0, min_contrast=70.0, margin=0.005)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in 0-1
    rgb: tuple[int, int, int] | None = None  # as drawn (None: the colour's exact value)

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
    background_rgb: tuple[int, int, int] | None = None  # as drawn (None: the background's exact value)
    antialias: bool = False

    def render(self) -> Image.Image:
        final = self.config.image_size
        side = final * 4 if self.antialias else final
        image = Image.new("RGB", (side, side), self.background_rgb or ALL_BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            x1, y1, x2, y2 = (round(v * side) for v in obj.box)
            colour = obj.rgb or COLOURS[obj.colour]
            if obj.shape == "circle":
                draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
            elif obj.shape == "square":
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
            else:
                draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=colour)
        return image.resize((final, final), Image.Resampling.BOX) if self.antialias else image

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


def _jittered(rgb: tuple[int, int, int], rng: random.Random, jitter: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-jitter, jitter))) for c in rgb)


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def make_scene(seed: int, config: WorldConfig = WorldConfig()) -> Scene:
    """The scene of ``seed``: same seed, same scene, on any machine.

    The canonical config draws exactly the scenes it always drew (the varied style's
    extra random draws happen only when it is on), so shapes-bench's main split is stable.
    """
    rng = random.Random(seed)
    varied = not config.canonical
    background = rng.choice(sorted(config.backgrounds))
    background_rgb = _jittered(ALL_BACKGROUNDS[background], rng, config.jitter) if varied else None
    antialias = varied and rng.random() < config.antialias
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
        if config.min_contrast and _distance(COLOURS[colour], background_rgb or ALL_BACKGROUNDS[background]) \
                < config.min_contrast:
            continue
        if config.sizes is None:
            size = rng.choice(sorted(SIZES))
            side = SIZES[size]
        else:
            side = round(rng.uniform(*config.sizes), 3)
            size = "large" if side >= 0.24 else "small"
        if config.grid:
            cell = 1 / config.grid
            row, col = divmod(cells[len(objects)], config.grid)
            x1 = col * cell + rng.uniform(config.margin, cell - side - config.margin)
            y1 = row * cell + rng.uniform(config.margin, cell - side - config.margin)
        else:
            x1, y1 = rng.uniform(0.02, 0.98 - side), rng.uniform(0.02, 0.98 - side)
        box = (round(x1, 3), round(y1, 3), round(x1 + side, 3), round(y1 + side, 3))
        if any(_overlap(box, o.box) > config.max_overlap for o in objects):
            continue
        rgb = _jittered(COLOURS[colour], rng, config.jitter) if varied and config.jitter else None
        objects.append(SceneObject(shape, colour, size, box, rgb))
        used.add((shape, colour))
    return Scene(seed, background, tuple(objects), config, background_rgb, antialias)


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
            reshaped.append(SceneObject(new, o.colour, o.size, o.box, o.rgb))
        out.append(replace(scene, objects=tuple(reshaped)))
    if len(objs) >= 2:
        colours = [o.colour for o in objs]
        moved = colours[1:] + colours[:1]  # every object takes the next one's colour
        recoloured = [SceneObject(o.shape, c, o.size, o.box, None if o.rgb is None else obj_rgb)
                      for o, c, obj_rgb in zip(objs, moved, [p.rgb for p in objs[1:] + objs[:1]], strict=True)]
        if len({o.category for o in recoloured}) == len(objs) and moved != colours:
            out.append(replace(scene, objects=tuple(recoloured)))
        i, j = rng.sample(range(len(objs)), 2)
        swapped = list(objs)
        swapped[i], swapped[j] = _moved(objs[i], objs[j].centre), _moved(objs[j], objs[i].centre)
        out.append(replace(scene, objects=tuple(swapped)))
    return out


def _moved(obj: SceneObject, centre: tuple[float, float]) -> SceneObject:
    half = (obj.box[2] - obj.box[0]) / 2
    x = min(max(centre[0], half), 1 - half)
    y = min(max(centre[1], half), 1 - half)
    return SceneObject(obj.shape, obj.colour, obj.size, (round(x - half, 3), round(y - half, 3),
                                                        round(x + half, 3), round(y + half, 3)), obj.rgb)

"""The teacher's view of an image: captions plus ``category: [x1, y1, x2, y2]`` boxes.

This is the symbolic context LLaVA hands its text-only teacher (boxes normalised to
0-1). Both teachers (the deterministic template teacher of the synthetic world and an
LLM behind an OpenAI-compatible endpoint) work from it and nothing else.
"""

from dataclasses import dataclass

KINDS = ("conversation", "detail", "complex")  # the paper's three response types


@dataclass(frozen=True)
class SymbolicObject:
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in 0-1


@dataclass(frozen=True)
class SymbolicContext:
    image_id: str
    image: str | None  # path relative to the image root, as in LLaVA's JSON
    captions: tuple[str, ...]
    objects: tuple[SymbolicObject, ...]

    def text(self) -> str:
        """Captions, a blank line, then one ``category: [x1, y1, x2, y2]`` line per object."""
        lines = list(self.captions)
        if self.objects:
            lines.append("")
            lines += [f"{o.category}: [{', '.join(f'{v:.3f}' for v in o.box)}]" for o in self.objects]
        return "\n".join(lines)


def scene_context(scene, image: str | None = None) -> SymbolicContext:
    """The symbolic context of a ``train.builtin.world.Scene`` (id = ``scene-<seed>``)."""
    return SymbolicContext(
        image_id=f"scene-{scene.seed}",
        image=image,
        captions=tuple(scene.captions()),
        objects=tuple(SymbolicObject(o.category, o.box) for o in scene.objects),
    )


def box_centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


CLEAR_MARGIN = 0.1  # relations closer to the diagonal than this are not asked or stated


def box_third(box: tuple[float, float, float, float]) -> tuple[int, int]:
    """Row and column (0-2) of the third of the image the box's centre lies in."""
    x, y = box_centre(box)
    return (0 if y < 1 / 3 else 2 if y > 2 / 3 else 1), (0 if x < 1 / 3 else 2 if x > 2 / 3 else 1)


def box_relation(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> str:
    """Where box ``a`` is relative to box ``b``, along the axis where they differ most."""
    (ax, ay), (bx, by) = box_centre(a), box_centre(b)
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def relation_is_clear(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
                      margin: float = CLEAR_MARGIN) -> bool:
    """True when one axis separates the centres by ``margin`` more than the other does.

    Near the diagonal the answer would hinge on a few pixels; such pairs are left out of
    captions and questions so that every stated relation is plain to see.
    """
    (ax, ay), (bx, by) = box_centre(a), box_centre(b)
    return abs(abs(ax - bx) - abs(ay - by)) >= margin

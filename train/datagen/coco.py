"""COCO annotations -> ``SymbolicContext``: captions, then ``category: [x1, y1, x2, y2]`` in 0-1.

Reads a COCO captions file (``images`` + ``annotations`` with ``caption``) and, optionally,
an instances file (``annotations`` with ``category_id`` and ``bbox`` = [x, y, w, h] in
pixels, plus ``categories``). Every problem names its file and record; by default the
first few are raised together as one ``AnnotationError``, or bad images can be skipped.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from train.builtin.symbolic import SymbolicContext, SymbolicObject

EDGE_TOLERANCE_PX = 2.0  # boxes may overhang the image by this much (COCO rounding); clipped


class AnnotationError(ValueError):
    """Bad annotation input; the message names the file and every record at fault."""


@dataclass(frozen=True)
class Problem:
    image_id: object  # None: the whole file
    message: str


@dataclass(frozen=True)
class CocoLoad:
    contexts: list[SymbolicContext]
    skipped: list[Problem]  # images left out (on_error="skip")


def read_json(path: Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise AnnotationError(f"{path}: not valid JSON: {exc.msg} at {where}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{path}: expected a COCO object with an \"annotations\" list")
    return data


def _images(data: dict, path: Path) -> dict:
    if not isinstance(data.get("images"), list):
        raise AnnotationError(f"{path}: expected a COCO object with an \"images\" list")
    out = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise AnnotationError(f"{path}: images[{i}] has no \"id\"")
        out[image["id"]] = image
    return out


def _box(ann: dict, image: dict) -> tuple[float, float, float, float]:
    """COCO [x, y, w, h] in pixels -> (x1, y1, x2, y2) in 0-1; ValueError says what is wrong."""
    width, height = image.get("width"), image.get("height")
    if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
        raise ValueError(f"image has no positive width/height (got {width!r} x {height!r})")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise ValueError(f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise ValueError(f"empty box {bbox} (width and height must be positive)")
    tol = EDGE_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(f"box {bbox} lies outside the {width}x{height} image")

    def clip(v: float) -> float:
        return round(min(max(v, 0.0), 1.0), 3)

    return clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height)


def _id_order(image_id) -> tuple:
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


def load_coco(captions: Path, instances: Path | None = None, *, image_prefix: str = "",
              on_error: str = "raise", max_listed: int = 10) -> CocoLoad:
    """Contexts for every image of the captions file, in image-id order.

    ``on_error``: "raise" (one ``AnnotationError`` listing up to ``max_listed`` problems) or
    "skip" (leave those images out and return them in ``skipped``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    captions = Path(captions)
    cap_data = read_json(captions)
    images = _images(cap_data, captions)
    problems: dict[object, list[str]] = {}

    def problem(image_id, where: Path, message: str) -> None:
        problems.setdefault(image_id, []).append(f"{where.name}: {message}")

    texts: dict[object, list[tuple[int, str]]] = {i: [] for i in images}
    for n, ann in enumerate(cap_data["annotations"]):
        ref = f"annotation {ann.get('id', f'#{n}')}" if isinstance(ann, dict) else f"annotations[{n}]"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in images:
            problem(image_id, captions, f"{ref}: image_id {image_id!r} is not in \"images\"")
            continue
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            problem(image_id, captions, f"{ref} (image {image_id}): empty or missing caption")
            continue
        texts[image_id].append((n, " ".join(caption.split())))
    for image_id, found in texts.items():
        if not found and image_id not in problems:
            name = images[image_id].get("file_name")
            problem(image_id, captions, f"image {image_id} ({name}): no captions")

    objects: dict[object, list[tuple[int, SymbolicObject]]] = {i: [] for i in images}
    if instances is not None:
        instances = Path(instances)
        inst = read_json(instances)
        names = {c.get("id"): c.get("name") for c in inst.get("categories") or [] if isinstance(c, dict)}
        if not names:
            raise AnnotationError(f"{instances}: no \"categories\" list with ids and names")
        inst_images = _images(inst, instances) if "images" in inst else images
        for n, ann in enumerate(inst["annotations"]):
            ref = f"annotation {ann.get('id', f'#{n}')}" if isinstance(ann, dict) else f"annotations[{n}]"
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if image_id not in images:
                problem(image_id, instances,
                        f"{ref}: image_id {image_id!r} has no captions (not in {captions.name})")
                continue
            if ann.get("category_id") not in names:
                problem(image_id, instances,
                        f"{ref} (image {image_id}): unknown category_id {ann.get('category_id')!r}")
                continue
            try:
                box = _box(ann, inst_images.get(image_id, images[image_id]))
            except ValueError as exc:
                problem(image_id, instances, f"{ref} (image {image_id}): {exc}")
                continue
            objects[image_id].append((n, SymbolicObject(str(names[ann["category_id"]]), box)))

    if problems and on_error == "raise":
        lines = [m for ms in problems.values() for m in ms]
        more = f"\n... and {len(lines) - max_listed} more" if len(lines) > max_listed else ""
        listing = "\n".join(lines[:max_listed]) + more
        raise AnnotationError(f"{len(lines)} problem(s) in the annotations:\n{listing}")

    contexts, skipped = [], []
    for image_id in sorted(images, key=_id_order):
        if image_id in problems:
            skipped += [Problem(image_id, m) for m in problems[image_id]]
            continue
        file_name = images[image_id].get("file_name")
        contexts.append(SymbolicContext(
            image_id=str(image_id),
            image=f"{image_prefix}{file_name}" if file_name else None,
            captions=tuple(t for _, t in texts[image_id]),
            objects=tuple(o for _, o in objects[image_id]),  # file order
        ))
    skipped += [Problem(i, m) for i, ms in problems.items() if i not in images for m in ms]
    return CocoLoad(contexts, skipped)

"""The example pictures of the README, drawn by hand with PIL primitives (4x, then smoothed),
not by the synthetic world's renderer: other sizes, places, backgrounds and edges than
the built-in model trained on. ``python examples/draw.py`` redraws them.
"""
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
S = 4


def canvas(w, h, bg):
    im = Image.new("RGB", (w * S, h * S), bg)
    return im, ImageDraw.Draw(im)


def done(im, path):
    im.resize((im.width // S, im.height // S), Image.Resampling.LANCZOS).save(path, optimize=True)


# 1. the case: white background, a red circle top left, a blue square bottom right
im, d = canvas(480, 480, (255, 255, 255))
d.ellipse([40*S, 50*S, 150*S, 160*S], fill=(230, 30, 35))
d.rectangle([340*S, 330*S, 440*S, 430*S], fill=(30, 60, 210))
done(im, HERE / "two_shapes.png")
# 2. three shapes on a light grey background
im, d = canvas(512, 512, (200, 200, 200))
d.polygon([(420*S, 40*S), (490*S, 150*S), (350*S, 150*S)], fill=(40, 160, 70))   # green triangle, top right
d.ellipse([205*S, 205*S, 305*S, 305*S], fill=(245, 200, 30))                     # yellow circle, centre
d.rectangle([30*S, 370*S, 140*S, 480*S], fill=(130, 50, 180))                    # purple square, bottom left
done(im, HERE / "three_shapes.png")

"""Draw particle circles over a micrograph and save it as a PNG (for figures and pick previews).

A float micrograph is normalised with the same robust clip as preprocessing
(`micrographs.normalize_to_uint8`); a uint8 one is drawn as it is. Large micrographs are shrunk
(area-averaged) so the longer side is at most `max_side`, and the circles follow them.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.io.micrographs import normalize_to_uint8

GREEN = (0, 230, 0)


def overlay_image(image, xy, diameter, max_side=1024, colors=GREEN, line_width=2):
    """RGB PIL image of `image` (H, W) with circles of `diameter` px around the centres `xy` (N, 2).

    `xy` holds x = column, y = row in pixels of `image`; `colors` is one RGB triple or one per
    centre. The result is shrunk so that its longer side is at most `max_side`.
    """
    pixels = image if image.dtype == np.uint8 else normalize_to_uint8(image)
    height, width = pixels.shape
    scale = min(1.0, max_side / max(height, width))
    picture = Image.fromarray(pixels)
    if scale < 1:
        picture = picture.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                 Image.Resampling.BOX)
    picture = picture.convert("RGB")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    per_pick = np.ndim(colors) == 2
    draw = ImageDraw.Draw(picture)
    radius = diameter * scale / 2
    for index, (x, y) in enumerate((xy + 0.5) * scale - 0.5):
        color = tuple(colors[index]) if per_pick else tuple(colors)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=color, width=line_width)
    return picture


def save_overlay_png(image, xy, diameter, path, max_side=1024, colors=GREEN, line_width=2):
    """Save `overlay_image(...)` to `path` as PNG."""
    overlay_image(image, xy, diameter, max_side, colors, line_width).save(path, format="PNG")


def blank_plot(size: tuple[int, int], font_size: int):
    """(white RGB image, its ImageDraw, a font of `font_size`) to draw a plot on."""
    image = Image.new("RGB", size, "white")
    return image, ImageDraw.Draw(image), ImageFont.load_default(size=font_size)

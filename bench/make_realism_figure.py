"""Make docs/synthetic_vs_empiar10017.png: a real micrograph beside synthetic ones, picks drawn.

Run from the repository root: python -m bench.make_realism_figure

Inputs: one EMPIAR-10017 test micrograph with its CryoPPP labels (a CryoTransformer-layout folder,
default ../shared/data/empiar10017) and one micrograph of the default synthetic dataset (made in
memory, no files), raw and with --denoised.
Output: a PNG of three panels (real | synthetic raw | synthetic denoised), each micrograph shrunk to
--panel px; circles: real labels in green; synthetic labeled particles in green, unlabeled ones
(hidden positives) in orange.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.errors import InputError, exit_on_input_error
from common.flags import add_renamed_argument
from datasets.io.coordinates import read_coco
from datasets.io.layout import SPLITS
from datasets.io.micrographs import read_micrograph
from picking.overlay import GREEN, overlay_image
from synthetic.simulator import SPECIES_STREAM, SyntheticConfig, generate_micrograph, make_species

REPO = Path(__file__).resolve().parents[1]
ORANGE = (255, 150, 0)
TITLE_HEIGHT = 22
GRAY_LEVELS = 48


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--empiar", default=str(REPO.parent / "shared" / "data" / "empiar10017"),
                        help="CryoTransformer-layout folder of EMPIAR-10017 (default: %(default)s)")
    parser.add_argument("--split", default="train", choices=SPLITS, help="synthetic split (default: train)")
    parser.add_argument("--index", type=int, default=4,
                        help="synthetic micrograph index; 4 of train shows carbon and ice (default: 4)")
    parser.add_argument("--panel", type=int, default=512, help="panel side, px (default: 512)")
    add_renamed_argument(parser, "--output", "--out", default=str(REPO / "docs" / "synthetic_vs_empiar10017.png"))
    return parser


def real_panel(root, panel):
    """The first EMPIAR test micrograph with its labels, and its title."""
    annotations = Path(root) / "annotations" / "instances_test.json"
    if not annotations.is_file():
        raise InputError(f"{annotations} not found; pass --empiar pointing at the EMPIAR-10017 folder")
    table, images = read_coco(annotations)
    stem = sorted(images)[0]
    image = read_micrograph(Path(root) / "test" / images[stem]["file_name"])
    particles = table[stem]
    title = f"EMPIAR-10017 (CryoPPP JPEG), {image.shape[1]} px, {len(particles)} labels"
    diameter = float(np.median(particles[:, 2]))
    return overlay_image(image, particles[:, :2], diameter, panel, line_width=1), title


def synthetic_panel(config, split, index, panel):
    """One synthetic micrograph with its truth: labeled green, unlabeled orange; and its title."""
    species = make_species(np.random.default_rng([config.seed, SPECIES_STREAM]), config)
    micrograph = generate_micrograph(config, species, SPLITS.index(split), index)
    colors = np.where(micrograph.labeled[:, None], GREEN, ORANGE)
    picture = overlay_image(micrograph.image, micrograph.centres, config.diameter, panel, colors,
                            line_width=1)
    kind = "denoised JPEG" if config.denoised else "raw"
    title = (f"synthetic {kind}, SNR {config.signal_to_noise:g}, defocus {micrograph.defocus_um:.2f} um, "
             f"{len(micrograph.centres)} particles")
    return picture, title


def compose(panels, panel):
    """Panels side by side under one-line titles, as a palette image."""
    figure = Image.new("RGB", (panel * len(panels) + 8 * (len(panels) - 1), panel + TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(figure)
    for number, (picture, title) in enumerate(panels):
        left = number * (panel + 8)
        figure.paste(picture, (left, TITLE_HEIGHT))
        draw.text((left + 4, 5), title, fill="black")
    return figure.quantize(palette=_palette(), dither=Image.Dither.NONE)


def _palette():
    """GRAY_LEVELS grays plus the circle colours: keeps the PNG small and the circles coloured."""
    colors = [(level, level, level) for level in np.linspace(0, 255, GRAY_LEVELS).round().astype(int)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([channel for color in colors + [GREEN, ORANGE] for channel in color])
    return palette


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    config = SyntheticConfig()
    with exit_on_input_error():
        panels = [real_panel(args.empiar, args.panel),
                  synthetic_panel(config, args.split, args.index, args.panel),
                  synthetic_panel(replace(config, denoised=True), args.split, args.index, args.panel)]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compose(panels, args.panel).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): " + " | ".join(title for _, title in panels))


if __name__ == "__main__":
    main()

"""Research protocol (uses complete labels): where a picker's top picks miss, and what the image shows there.

Per micrograph the first n picks by score (n = its number of labelled particles) are matched to the
labels as evaluate_picks.py matches them (radius 0.5 x diameter), and every pick and particle is put in
one class:

- `matched`: a pick matched to a particle;
- `displaced`: an unmatched pick within one diameter of a particle that no pick matched (the pick or the
  label is off-centre);
- `neighbour`: an unmatched pick within one diameter of a matched particle (packed particles: a
  neighbour the labels skip, or a second pick on one particle);
- `far`: an unmatched pick further than one diameter from every particle;
- `missed`: a particle with no pick within one diameter;
- `background` (the control): random points at least one diameter from every particle and pick, as
  many as the micrograph's particles.

For each class it averages the micrograph (each standardised) in a 2-diameter square centred on the
picks (on the particles for `missed`; `displaced_label` is the same pairs centred on the label),
low-pass filters the mean, and scores its central diameter-wide square by the Pearson correlation with
the `matched` mean's: high where the class shows the same particle, centred; `background` says how
high the structure of the micrographs alone takes it (negative on EMPIAR-10146, about 0.5 on the
denoised EMPIAR-10017). Writes `pick_errors.json` and
`pick_errors.png` (the mean images, low-pass filtered, in the order of the JSON) to --output-dir.

    python -m bench.pick_errors --picks OUT/picks --ground-truth ROOT/annotations/instances_val.json \
        --micrographs ROOT/val --output-dir OUT/errors
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from tqdm import tqdm

from common.errors import InputError
from common.files import atomic_write_json
from datasets.io.coordinates import micrograph_stem, read_coco
from datasets.io.micrographs import list_micrographs, read_micrograph
from evaluate_picks import read_picks
from picking.evaluate import match_picks

CLASSES = ("matched", "displaced", "displaced_label", "neighbour", "far", "missed", "background")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--picks", required=True, help="picks folder or file (as evaluate_picks.py reads)")
    parser.add_argument("--ground-truth", required=True, help="COCO json with every particle labelled")
    parser.add_argument("--micrographs", required=True, help="folder of the micrographs the picks are on")
    parser.add_argument("--output-dir", required=True)
    return parser


def classify(picks: np.ndarray, particles: np.ndarray, diameter: float, shape, rng) -> dict:
    """Centres (x, y) per class of one micrograph of `shape` (rows, cols); picks [N, 4], particles [M, >= 2]."""
    picks = picks[np.argsort(-picks[:, 3], kind="stable")][:len(particles), :2]
    particles = particles[:, :2]
    partner = match_picks(picks, particles, 0.5 * diameter)
    matched = np.zeros(len(particles), bool)
    matched[partner[partner >= 0]] = True
    found = {name: [] for name in CLASSES}
    found["matched"] = list(picks[partner >= 0])
    if len(picks):
        distance, nearest = cKDTree(particles).query(picks)
        for xy, gap, j, paired in zip(picks, distance, nearest, partner >= 0):
            if paired:
                continue
            if gap > diameter:
                found["far"].append(xy)
            elif matched[j]:
                found["neighbour"].append(xy)
            else:
                found["displaced"].append(xy)
                found["displaced_label"].append(particles[j])
    reach = cKDTree(picks).query(particles)[0] if len(picks) else np.full(len(particles), np.inf)
    found["missed"] = list(particles[reach > diameter])
    found["background"] = list(background_points(np.concatenate([particles, picks]), diameter, shape, rng,
                                                 len(particles)))
    return found


def background_points(occupied: np.ndarray, diameter: float, shape, rng, count: int) -> np.ndarray:
    """Up to `count` uniform random points (x, y) at least `diameter` from every point of `occupied`."""
    draws = rng.uniform(0, 1, (20 * count, 2)) * [shape[1] - 1, shape[0] - 1]
    return draws[cKDTree(occupied).query(draws)[0] >= diameter][:count]


def crops(image: np.ndarray, centres, half: int) -> list:
    """The (2 half + 1)^2 squares of `image` centred on `centres` that lie wholly inside it."""
    out = []
    for x, y in np.rint(np.asarray(centres).reshape(-1, 2)).astype(int):
        if half <= x < image.shape[1] - half and half <= y < image.shape[0] - half:
            out.append(image[y - half:y + half + 1, x - half:x + half + 1])
    return out


def micrograph_path(paths: dict, folder, stem: str) -> Path:
    """The micrograph of `stem` among `paths` (stem -> file of `folder`), or a one-line InputError."""
    if stem not in paths:
        raise InputError(f"no micrograph {stem}.* in {folder}; pass the folder the picks were made on")
    return paths[stem]


def run(args) -> dict:
    _, picks = read_picks(Path(args.picks), None)
    truth = read_coco(args.ground_truth)[0]
    diameter = float(np.nanmedian(np.concatenate([t[:, 2] for t in truth.values() if len(t)])))
    half = int(round(diameter))
    paths = {micrograph_stem(path.name): path for path in list_micrographs(args.micrographs)}
    counts, squares = dict.fromkeys(CLASSES, 0), {name: [] for name in CLASSES}
    rng = np.random.default_rng(0)
    for stem, particles in tqdm(sorted(truth.items()), desc="micrographs", unit="micrograph"):
        image = read_micrograph(micrograph_path(paths, args.micrographs, stem)).astype(np.float32)
        image = (image - image.mean()) / (image.std() or 1.0)
        found = classify(picks.get(stem, np.zeros((0, 4))), particles, diameter, image.shape, rng)
        for name, centres in found.items():
            counts[name] += len(centres)
            squares[name] += crops(image, centres, half)
    smooth = {name: low_pass(np.mean(cut, axis=0)) if cut else None for name, cut in squares.items()}
    box = slice(half - half // 2, half + half // 2 + 1)
    reference = smooth["matched"]
    correlation = {name: (float(np.corrcoef(mean[box, box].ravel(), reference[box, box].ravel())[0, 1])
                          if mean is not None and reference is not None else None) for name, mean in smooth.items()}
    return {"picks": str(args.picks), "ground_truth": str(args.ground_truth), "diameter_px": diameter,
            "counts": counts, "correlation_with_matched": correlation, "means": smooth}


def low_pass(mean: np.ndarray, sigma_fraction: float = 0.025) -> np.ndarray:
    """A mean image Gaussian-filtered at sigma = `sigma_fraction` x its side (the side is two diameters, so
    sigma is a twentieth of a diameter): a particle's shape stays, the noise of a few dozen crops goes."""
    return gaussian_filter(mean, sigma_fraction * mean.shape[0])


def save_means(means: dict, path: Path) -> None:
    """The (low-pass filtered) class means side by side, each stretched to 0-255, as one PNG."""
    tiles = [(mean - mean.min()) / (np.ptp(mean) or 1.0) * 255 for mean in means.values() if mean is not None]
    Image.fromarray(np.concatenate(tiles, axis=1).astype(np.uint8)).save(path)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    result = run(args)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    save_means(result.pop("means"), output / "pick_errors.png")
    atomic_write_json(output / "pick_errors.json", result)
    print(f"{'class':16s} {'count':>6s} {'corr. with matched':>19s}")
    for name in CLASSES:
        corr = result["correlation_with_matched"][name]
        print(f"{name:16s} {result['counts'][name]:6d} {'' if corr is None else f'{corr:19.2f}'}")
    print(f"wrote {output / 'pick_errors.json'} and {output / 'pick_errors.png'}")
    return result


if __name__ == "__main__":
    main()

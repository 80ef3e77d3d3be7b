"""bench/pick_errors.py: each top pick and particle lands in the right class, and the mean images tell a
particle from background."""
import json

import numpy as np
import pytest
from PIL import Image

from bench import pick_errors
from common.errors import InputError

DIAMETER = 20.0


def test_each_pick_and_particle_lands_in_its_class():
    particles = np.array([[50, 50, DIAMETER, 1], [100, 50, DIAMETER, 1], [150, 150, DIAMETER, 1],
                          [50, 150, DIAMETER, 1], [200, 40, DIAMETER, 1]], dtype=float)
    picks = np.array([
        [52, 50, DIAMETER, 9],    # matched to (50, 50)
        [115, 50, DIAMETER, 8],   # 15 px from (100, 50), which no pick matched: displaced
        [65, 62, DIAMETER, 7],    # 19 px from the matched (50, 50): neighbour
        [150, 60, DIAMETER, 6],   # > 1 diameter from every particle: far
        [150, 150, DIAMETER, 5],  # matched
        [50, 150, DIAMETER, -9],  # beyond the first 5 picks: ignored, so (50, 150) is missed
    ])
    found = pick_errors.classify(picks, particles, DIAMETER, (240, 240), np.random.default_rng(0))
    counts = {name: len(centres) for name, centres in found.items()}
    assert counts == {"matched": 2, "displaced": 1, "displaced_label": 1, "neighbour": 1, "far": 1, "missed": 2,
                      "background": 5}
    np.testing.assert_allclose(found["displaced_label"][0], [100, 50])
    missed = {tuple(xy) for xy in np.asarray(found["missed"])}
    assert missed == {(50.0, 150.0), (200.0, 40.0)}
    occupied = np.concatenate([particles[:, :2], picks[:5, :2]])
    gaps = np.linalg.norm(np.asarray(found["background"])[:, None] - occupied[None], axis=2)
    assert gaps.min() >= DIAMETER


def _disc_micrograph(centres, size=256, seed=0):
    yy, xx = np.mgrid[:size, :size]
    image = np.random.default_rng(seed).normal(0, 1, (size, size))
    for x, y in centres:
        image += 4.0 * ((xx - x) ** 2 + (yy - y) ** 2 <= (DIAMETER / 2) ** 2)
    return np.clip((image + 4) * 20, 0, 255).astype(np.uint8)


def test_mean_images_tell_particles_the_labels_skip_from_background(tmp_path):
    labelled = [(40 + 60 * i, 40 + 60 * j) for i in range(4) for j in range(2)]
    skipped = [(40 + 60 * i, 200) for i in range(4)]  # particles the labels leave out
    (tmp_path / "val").mkdir()
    Image.fromarray(_disc_micrograph(labelled + skipped)).save(tmp_path / "val" / "m0.png")
    coco = {"images": [{"id": 0, "file_name": "m0.png", "width": 256, "height": 256}],
            "categories": [{"id": 1, "name": "particle"}],
            "annotations": [{"id": i + 1, "image_id": 0, "category_id": 1,
                             "bbox": [x - DIAMETER / 2, y - DIAMETER / 2, DIAMETER, DIAMETER]}
                            for i, (x, y) in enumerate(labelled)]}
    (tmp_path / "truth.json").write_text(json.dumps(coco))
    rows = [(x, y, 10.0) for x, y in labelled[:4]] + [(x, y, 9.0) for x, y in skipped]
    picks = "X-Coordinate,Y-Coordinate,Diameter,Confidence Score\n" + "".join(
        f"{x},{y},{DIAMETER},{score}\n" for x, y, score in rows)
    (tmp_path / "picks").mkdir()
    (tmp_path / "picks" / "m0.csv").write_text(picks)
    result = pick_errors.main(["--picks", str(tmp_path / "picks"), "--ground-truth", str(tmp_path / "truth.json"),
                               "--micrographs", str(tmp_path / "val"), "--output-dir", str(tmp_path / "out")])
    assert result["counts"]["matched"] == 4 and result["counts"]["far"] == 4 and result["counts"]["missed"] == 4
    correlation = result["correlation_with_matched"]
    assert correlation["far"] > 0.8 > correlation["background"]
    written = json.loads((tmp_path / "out" / "pick_errors.json").read_text())
    assert written["counts"] == result["counts"]
    assert Image.open(tmp_path / "out" / "pick_errors.png").size[1] == 2 * round(DIAMETER) + 1


def test_a_micrograph_not_in_the_folder_is_named(tmp_path):
    with pytest.raises(InputError, match="no micrograph m9"):
        pick_errors.micrograph_path({"m0": tmp_path / "m0.png"}, tmp_path, "m9")

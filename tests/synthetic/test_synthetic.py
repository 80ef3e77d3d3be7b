"""The synthetic generator: CTF physics, counts and geometry, determinism, files, bad options."""
import json
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from PIL import Image
from scipy.optimize import brentq

import make_synthetic_dataset
from bench import bench_synthetic
from common.errors import InputError
from datasets.io.coordinates import read_coco, read_cryoppp_csv
from datasets.io.micrographs import read_micrograph
from picking.overlay import save_overlay_png
from synthetic.simulator import SyntheticConfig, validate, write_dataset

SMALL = SyntheticConfig(num_train=2, num_val=1, num_test=1, width=320, height=256, diameter=20,
                        density=0.15, label_fraction=0.6, contaminants=1.0, junk=5, carbon_fraction=0.5)


def first_ctf_zero(defocus_um, voltage_kv=300.0, cs_mm=2.7, amplitude=0.07):
    """First zero (1/A) of sin(chi + arcsin(A)), solved here from the textbook formula."""
    volts = voltage_kv * 1e3
    wavelength = 12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts))

    def phase(k):
        chi = (np.pi * wavelength * defocus_um * 1e4 * k ** 2
               - 0.5 * np.pi * cs_mm * 1e7 * wavelength ** 3 * k ** 4)
        return chi + np.arcsin(amplitude) - np.pi
    return brentq(phase, 1e-4, 0.2)


def radial_power(image, pixel_size):
    """(spatial frequency 1/A per ring, mean power per ring) of a square image."""
    side = image.shape[0]
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    frequency = np.fft.fftfreq(side)
    ring = np.rint(np.hypot(frequency[:, None], frequency[None, :]) * side).astype(int)
    mean = np.bincount(ring.ravel(), power.ravel()) / np.bincount(ring.ravel())
    return np.arange(len(mean)) / (side * pixel_size), mean


def written_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(SMALL, out)
    return out


def test_power_spectrum_first_zero_matches_defocus(tmp_path):
    config = SyntheticConfig(num_train=1, num_val=0, num_test=2, width=384, height=384, snr=20.0,
                             contaminants=0, junk=0, carbon_fraction=0, seed=3)
    write_dataset(config, tmp_path)
    summary = json.loads((tmp_path / "dataset.json").read_text())
    defocus = {m["stem"]: m["defocus_um"] for m in summary["micrographs"]}
    assert len(set(defocus.values())) == 3 and all(1.0 <= d <= 2.5 for d in defocus.values())
    for stem, defocus_um in defocus.items():
        split = stem.split("_")[1]
        k, power = radial_power(read_micrograph(tmp_path / split / f"{stem}.mrc"), config.pixel_size)
        expected = first_ctf_zero(defocus_um)
        window = (k > 0.75 * expected) & (k < 1.25 * expected)
        found = k[window][np.argmin(power[window])]
        assert found == pytest.approx(expected, rel=0.05), stem


def test_counts_labels_and_geometry(small_dataset):
    summary = json.loads((small_dataset / "dataset.json").read_text())
    per_micrograph = round(0.15 * 320 * 256 / (np.pi * 20 ** 2 / 4))
    assert [m["particles"] for m in summary["micrographs"]] == [per_micrograph] * 4
    for split in ("train", "val", "test"):
        table, images = read_coco(small_dataset / "annotations" / f"instances_{split}.json")
        for stem, labeled in table.items():
            truth = read_cryoppp_csv(small_dataset / "ground_truth" / f"{stem}.csv")[stem]
            assert len(truth) == per_micrograph
            expected_labels = round(0.6 * per_micrograph) if split == "train" else per_micrograph
            assert len(labeled) == expected_labels
            assert images[stem]["width"] == 320 and images[stem]["height"] == 256
            assert np.allclose(labeled[:, 2], 20)
            assert {tuple(p) for p in labeled[:, :2]} <= {tuple(p) for p in truth[:, :2]}
            csv = read_cryoppp_csv(small_dataset / "particle_coordinates" / f"{stem}.csv")[stem]
            np.testing.assert_allclose(csv[:, :3], labeled[:, :3])
            assert np.all((truth[:, :2] >= 10) & (truth[:, :2] <= [310, 246]))
            gaps = np.hypot(*(truth[:, None, :2] - truth[None, :, :2]).transpose(2, 0, 1))
            assert gaps[~np.eye(len(truth), dtype=bool)].min() >= 0.95 * 20 - 1e-9


def test_coco_bbox_is_centre_minus_half_diameter(small_dataset):
    coco = json.loads((small_dataset / "annotations" / "instances_val.json").read_text())
    stem = Path(coco["images"][0]["file_name"]).stem
    truth = read_cryoppp_csv(small_dataset / "ground_truth" / f"{stem}.csv")[stem]
    boxes = np.array([a["bbox"] for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]])
    np.testing.assert_allclose(boxes, np.column_stack([truth[:, :2] - 10, np.full((len(truth), 2), 20)]))
    assert coco["categories"] == [{"id": 1, "name": "particle", "supercategory": ""}]
    assert {a["category_id"] for a in coco["annotations"]} == {1}


def test_micrographs_round_trip_through_readers(small_dataset):
    summary = json.loads((small_dataset / "dataset.json").read_text())
    for facts in summary["micrographs"]:
        path = small_dataset / facts["split"] / facts["file_name"]
        image = read_micrograph(path)
        assert image.shape == (256, 320) and image.dtype == np.float32 and image.std() > 0
        with mrcfile.open(path) as mrc:
            assert float(mrc.voxel_size.x) == pytest.approx(SMALL.pixel_size)
    assert summary["config"]["snr"] == 0.1 and summary["config"]["format"] == "mrc"


def test_same_seed_same_bytes_for_any_worker_count(tmp_path, small_dataset):
    write_dataset(SMALL, tmp_path / "two_workers", num_workers=2)
    assert written_files(tmp_path / "two_workers") == written_files(small_dataset)
    write_dataset(replace(SMALL, seed=1, num_val=0, num_test=0), tmp_path / "other_seed")
    first = "train/synthetic_train_000.mrc"
    assert (tmp_path / "other_seed" / first).read_bytes() != (small_dataset / first).read_bytes()


def test_rewrite_removes_the_previous_dataset_and_refuses_other_folders(tmp_path):
    out = tmp_path / "again"
    write_dataset(replace(SMALL, num_val=0, num_test=0), out)
    write_dataset(replace(SMALL, num_train=1, num_val=0, num_test=0, format="jpg"), out)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["synthetic_train_000.jpg"]
    assert len(list((out / "ground_truth").iterdir())) == 1
    (tmp_path / "other" / "notes").mkdir(parents=True)
    with pytest.raises(InputError, match="--out .* not empty"):
        write_dataset(SMALL, tmp_path / "other")


def test_denoised_jpeg_dataset(tmp_path):
    summary = make_synthetic_dataset.main(["--output-dir", str(tmp_path), "--denoised", "--num-train", "1",
                                           "--num-val", "0", "--num-test", "0", "--width", "256",
                                           "--height", "192", "--particle-diameter", "16"])
    image = Image.open(tmp_path / "train" / "synthetic_train_000.jpg")
    assert image.mode == "L" and image.size == (256, 192)
    assert summary["config"]["format"] == "jpg" and summary["config"]["snr"] == 0.2


@pytest.mark.parametrize("change, option", [
    ({"diameter": 200}, "--particle-diameter"),
    ({"density": 0.6}, "--density"),
    ({"snr": 0.0}, "--snr"),
    ({"snr": -1.0}, "--snr"),
    ({"label_fraction": 1.5}, "--label-fraction"),
    ({"format": "png"}, "--format"),
    ({"defocus_min": 3.0}, "--defocus-min"),
])
def test_bad_options_raise_input_error(change, option):
    with pytest.raises(InputError, match=option):
        validate(replace(SMALL, **change))


def test_density_that_cannot_fit_is_an_input_error(tmp_path, capsys):
    crowded = replace(SMALL, width=96, height=96, density=0.5, contaminants=40)
    with pytest.raises(InputError, match="--density .* particles"):
        write_dataset(crowded, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic_dataset.main(["--output-dir", str(tmp_path), "--snr", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --snr -1.0")


def test_overlay_png_draws_circles_and_shrinks(tmp_path):
    image = np.random.default_rng(0).normal(size=(200, 400)).astype(np.float32)
    save_overlay_png(image, np.array([[100.0, 100.0], [300.0, 50.0]]), 40, tmp_path / "o.png",
                     max_side=200, colors=(255, 0, 0), line_width=1)
    overlay = np.asarray(Image.open(tmp_path / "o.png"))
    assert overlay.shape == (100, 200, 3)
    red = (overlay[..., 0] == 255) & (overlay[..., 1] == 0)
    rows, cols = np.nonzero(red)
    assert red.sum() > 20 and 39 <= cols.min() and cols.max() <= 161 and rows.max() <= 61


def test_bench_prints_seconds_per_micrograph(capsys):
    results = bench_synthetic.main(["--sizes", "128", "--repeats", "1"])
    assert results[128][2] > 0 and "128 x 128:" in capsys.readouterr().out


def test_blobs_centred_off_the_micrograph_add_nothing():
    from synthetic.simulator import _sphere_thickness
    canvas = np.zeros((64, 64))
    _sphere_thickness(canvas, -25.5, 43.5, 10.3)   # entirely left of the micrograph
    _sphere_thickness(canvas, 90.0, -30.0, 10.3)   # entirely right of and above it
    assert not canvas.any()
    _sphere_thickness(canvas, -5.0, 32.0, 10.0)    # half on it
    assert canvas[:, :6].any() and not canvas[:, 6:].any()


def test_a_crafted_dataset_json_deletes_nothing_outside_the_folder(tmp_path, capsys):
    out, victim = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    victim.write_text("keep me")
    (out / "dataset.json").write_text(json.dumps({"micrographs": [
        {"split": "train", "file_name": "../../precious.txt", "stem": "x"}]}))
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic_dataset.main(["--output-dir", str(out), "--num-train", "1", "--num-val", "0", "--num-test", "0"])
    assert exit_info.value.code == 2 and victim.read_text() == "keep me"
    assert "outside the dataset's own folders" in capsys.readouterr().err

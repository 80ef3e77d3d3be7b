"""Ångström where users think in Ångström: the pixel size from MRC headers (or --pixel-size) and the particle
diameter in Å become preprocessing facts, which travel to the checkpoint and picking."""
import json

import mrcfile
import pytest

import make_synthetic_dataset
import preprocess_coco_full_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic data set whose MRC headers say 1.5 Å/px (the generator leaves them unset)."""
    root = tmp_path_factory.mktemp("angstrom") / "data"
    make_synthetic_dataset.main(["--output-dir", str(root), "--num-train", "2", "--num-val", "1", "--num-test", "1",
                                 "--width", "256", "--height", "256", "--particle-diameter", "24", "--seed", "3"])
    for path in root.glob("*/*.mrc"):
        with mrcfile.open(path, mode="r+") as mrc:
            mrc.voxel_size = 1.5
    return root


def facts(data, out, *extra):
    preprocess_coco_full_dataset.main(["--data-root", str(data), "--output-dir", str(out), "--patch-size", "64",
                                       "--target-diameter", "32", "--chunk-size", "500", "--expected-particles",
                                       "20", *extra])
    return json.loads((out / "metadata.json").read_text())["facts"]


def test_pixel_size_comes_from_the_headers_and_the_diameter_from_angstrom(data, tmp_path, capsys):
    from_headers = facts(data, tmp_path / "a")
    assert from_headers["pixel_size_angstrom"] == pytest.approx(1.5)
    assert from_headers["particle_diameter_px"] == pytest.approx(24.0)  # the labels' median
    assert "(36 Å at 1.5 Å/px)" in capsys.readouterr().out
    in_angstrom = facts(data, tmp_path / "b", "--particle-diameter-angstrom", "45")
    assert in_angstrom["particle_diameter_px"] == pytest.approx(30.0)
    assert in_angstrom["scale"] == pytest.approx(32 / 30)
    overridden = facts(data, tmp_path / "c", "--pixel-size", "0.9", "--particle-diameter-angstrom", "27")
    assert (overridden["pixel_size_angstrom"], overridden["particle_diameter_px"]) == (0.9, pytest.approx(30.0))


@pytest.mark.parametrize("extra, message", [
    (["--particle-diameter", "24", "--particle-diameter-angstrom", "36"], "pass one of them"),
    (["--pixel-size", "0"], "--pixel-size 0.0 must be positive"),
])
def test_conflicting_or_bad_sizes_are_one_line_errors(data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        facts(data, tmp_path / "out", *extra)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in error and "\n" not in error


def test_angstrom_without_any_pixel_size_names_the_flag(tmp_path, capsys):
    root = tmp_path / "jpg"
    make_synthetic_dataset.main(["--output-dir", str(root), "--num-train", "2", "--num-val", "1", "--num-test", "1",
                                 "--width", "256", "--height", "256", "--particle-diameter", "24", "--seed", "3", "--denoised"])
    with pytest.raises(SystemExit):
        facts(root, tmp_path / "out", "--particle-diameter-angstrom", "36")
    assert "--pixel-size" in capsys.readouterr().err

"""Picks that import as they are: RELION job layout and cryoSPARC STAR read back as those programs parse them,
pick once and threshold later, a threshold suggested without truth, and pixel sizes in Ångström."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from PIL import Image
from test_picking import DIAMETER, FACTS, SPEC, SYNTHETIC, DarkBlobScorer, make_checkpoint, pick_cli

import threshold_picks
from datasets.io.coordinates import read_coordinates
from datasets.io.micrographs import read_micrograph, read_pixel_size, rescale
from picking.score import Picker, pick_prepared, prepare_for_picking
from picking.threshold import count_threshold, suggest_threshold, valley_threshold
from synthetic.simulator import SPECIES_STREAM, generate_micrograph, make_species


def write_mrc(path, image, pixel_size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(image, dtype=np.float32))
        if pixel_size is not None:
            mrc.voxel_size = pixel_size
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A RELION-like project: two synthetic micrographs in MotionCorr/job002/Movies/, and a checkpoint."""
    root = tmp_path_factory.mktemp("project")
    species = make_species(np.random.default_rng([SYNTHETIC.seed, SPECIES_STREAM]), SYNTHETIC)
    for index in range(2):
        write_mrc(root / "MotionCorr" / "job002" / "Movies" / f"mic_{index}.mrc",
                  generate_micrograph(SYNTHETIC, species, 2, index).image)
    return root, make_checkpoint(root / "best.pt")


@pytest.fixture(scope="module")
def picked(project, tmp_path_factory):
    root, checkpoint = project
    out = root / "External" / "job010"
    summary = pick_cli(checkpoint, root / "MotionCorr" / "job002" / "Movies", out, "--stride", "16",
                       "--relion-project-dir", str(root), "--threshold", "0.5", "--overlays", "1")
    return root, out, summary


def copy_picks(folder, copy):
    """A copy of a picks folder (not its lock), to rethreshold without touching the module's fixture."""
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_relion_job_layout_reads_back_as_relion_extract_expects(picked):
    root, out, _ = picked
    listing = starfile.read(out / "autopick.star", always_dict=True)
    assert list(listing) == ["coordinate_files"]
    table = listing["coordinate_files"]
    assert list(table.columns) == ["rlnMicrographName", "rlnMicrographCoordinates"]
    assert table["rlnMicrographName"].tolist() == [f"MotionCorr/job002/Movies/mic_{i}.mrc" for i in range(2)]
    assert table["rlnMicrographCoordinates"].tolist() == [f"External/job010/Movies/mic_{i}_autopick.star"
                                                          for i in range(2)]
    candidates = np.load(out / "candidates" / "mic_0.npy")
    for name in table["rlnMicrographCoordinates"]:
        coordinates = starfile.read(root / name, always_dict=True)
        assert list(coordinates) == [""]  # RELION's per-micrograph `data_` block
        frame = coordinates[""]
        assert {"rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"} <= set(frame.columns)
        assert (frame["rlnAutopickFigureOfMerit"] >= 0.5).all()
    frame = starfile.read(root / table["rlnMicrographCoordinates"][0], always_dict=True)[""]
    kept = candidates[candidates[:, 3] >= 0.5]
    np.testing.assert_allclose(frame[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), kept[:, :2], atol=5e-4)


def test_cryosparc_particles_star_names_each_micrograph_by_its_full_path(picked):
    root, out, summary = picked
    frame = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(frame.columns)
    assert all(Path(name).is_absolute() and Path(name).is_file() for name in frame["rlnMicrographName"])
    assert len(frame) == summary["outputs"]["n_picks"]
    assert (frame["rlnAutopickFigureOfMerit"] >= 0.5).all()


def test_every_file_holds_the_picks_at_the_chosen_threshold_and_box_has_no_more(picked):
    _, out, summary = picked
    total = 0
    for stem in ("mic_0", "mic_1"):
        candidates = np.load(out / "candidates" / f"{stem}.npy")
        expected = int((candidates[:, 3] >= 0.5).sum())
        assert len(candidates) > expected  # the candidates reach below the threshold
        assert len(np.loadtxt(out / f"{stem}.box", ndmin=2)) == expected
        assert len(read_coordinates(out / f"{stem}.csv")[stem]) == expected
        total += expected
    assert summary["outputs"]["n_picks"] == total
    assert Image.open(out / "score_histogram.png").size == (640, 400)
    assert (out / "overlays" / "mic_0.png").is_file() and not (out / "overlays" / "mic_1.png").exists()


def test_rethreshold_rewrites_every_file_as_picking_at_that_threshold_would(project, picked, tmp_path):
    root, checkpoint = project
    _, out, _ = picked
    copy = copy_picks(out, tmp_path / "copy")
    overlay_before = (copy / "overlays" / "mic_0.png").read_bytes()
    threshold_picks.main(["--output-dir", str(copy), "--threshold", "-2"])
    fresh = tmp_path / "fresh"
    pick_cli(checkpoint, root / "MotionCorr" / "job002" / "Movies", fresh, "--stride", "16",
             "--relion-project-dir", str(root), "--threshold", "-2", "--overlays", "1")
    for name in ("mic_0.csv", "mic_1.box", "mic_1.txt", "particles.star"):
        assert (copy / name).read_bytes() == (fresh / name).read_bytes(), name
    assert (copy / "overlays" / "mic_0.png").read_bytes() != overlay_before  # overlays follow the files
    capped = threshold_picks.main(["--output-dir", str(copy), "--picks-per-micrograph", "3"])
    assert capped["n_picks"] == 6 and capped["threshold_method"] == "picks_per_micrograph"
    assert len(read_coordinates(copy / "mic_0.csv")["mic_0"]) == 3


def test_formats_left_out_on_a_rethreshold_are_removed_not_left_stale(picked, tmp_path):
    _, out, _ = picked
    copy = copy_picks(out, tmp_path / "copy")
    with pytest.warns(FutureWarning, match="--formats txt is now called topaz"):
        threshold_picks.main(["--output-dir", str(copy), "--threshold", "1", "--formats", "csv", "txt"])
    assert (copy / "mic_0.txt").is_file() and (copy / "mic_0.csv").is_file()
    assert not (copy / "mic_0.box").exists() and not (copy / "particles.star").exists()
    assert json.loads((copy / "manifest.json").read_text())["outputs"]["formats"] == ["csv", "topaz"]


def test_threshold_from_the_expected_count_keeps_that_many_on_average():
    scores = np.arange(100, dtype=float)
    assert count_threshold(scores, n_micrographs=4, expected_particles=5) == 80.0
    suggestion = suggest_threshold(scores, 4, expected_particles=5)
    assert suggestion.method == "expected_particles" and (scores >= suggestion.threshold).sum() == 20
    assert count_threshold(scores, 4, expected_particles=1000) == 0.0  # fewer candidates than asked: all


def test_valley_threshold_lies_between_the_background_and_particle_modes():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(-4, 0.8, 5000), rng.normal(3, 0.8, 1000)])
    valley = valley_threshold(scores)  # the mixture's density is lowest at -0.35
    assert -1.0 < valley < 0.3
    assert suggest_threshold(scores, 10).method == "valley"
    unimodal = suggest_threshold(rng.normal(0, 1, 5000), 10)
    assert (unimodal.threshold, unimodal.method) == (0.0, "no valley: logit 0")


def test_rethreshold_of_a_folder_without_candidates_is_one_line(tmp_path, capsys):
    (tmp_path / "picks").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        threshold_picks.main(["--output-dir", str(tmp_path / "picks")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "manifest.json" in error and "\n" not in error
    (tmp_path / "picks" / "manifest.json").write_text(json.dumps(
        {"micrographs": [], "checkpoint": "x", "settings": {"relion_project_dir": str(tmp_path)}}))
    with pytest.raises(SystemExit):
        threshold_picks.main(["--output-dir", str(tmp_path / "picks")])
    assert "no picked micrograph with candidates" in capsys.readouterr().err


def test_picking_at_another_pixel_size_matches_resampling_by_hand(tmp_path):
    """Micrographs at 1.25 Å/px, model trained at 1.0 Å/px: the tool's picks equal (within 2 px) those of
    the same micrograph resampled to 1.0 Å/px by hand, mapped back to its pixels."""
    species = make_species(np.random.default_rng([SYNTHETIC.seed, SPECIES_STREAM]), SYNTHETIC)
    native = generate_micrograph(replace(SYNTHETIC, width=640, height=576), species, 2, 0).image
    coarse = write_mrc(tmp_path / "coarse.mrc", rescale(native, 0.8), pixel_size=1.25)
    by_hand = write_mrc(tmp_path / "by_hand.mrc", rescale(read_micrograph(coarse), 1.25), pixel_size=1.0)
    picker = Picker(DarkBlobScorer(), replace(FACTS, pixel_size_angstrom=1.0), SPEC)
    options = {"stride": 16, "threshold": None, "device": "cpu"}

    def picks(path):
        micrograph = prepare_for_picking(path, picker.facts)
        diameter = DIAMETER / micrograph.size_ratio
        return micrograph, pick_prepared(picker, micrograph, min_distance_px=0.5 * diameter, **options)[:40]  # best 40

    coarse_micrograph, tool = picks(coarse)
    by_hand_micrograph, reference = picks(by_hand)
    assert (coarse_micrograph.pixel_size, coarse_micrograph.size_ratio) == (1.25, 1.25)
    assert by_hand_micrograph.size_ratio == 1.0
    shrink = np.array(coarse_micrograph.original_shape[::-1]) / np.array(by_hand_micrograph.original_shape[::-1])
    mapped = (reference[:, :2] + 0.5) * shrink - 0.5
    distance = np.linalg.norm(tool[:, None, :2] - mapped[None], axis=-1).min(axis=1)
    assert np.mean(distance <= 2.0) >= 0.9, np.sort(distance)
    np.testing.assert_allclose(tool[:, 2], DIAMETER / 1.25)


def test_a_pixel_size_more_than_twice_the_training_one_is_refused_unless_forced(project, tmp_path, capsys):
    _, _ = project
    species = make_species(np.random.default_rng([SYNTHETIC.seed, SPECIES_STREAM]), SYNTHETIC)
    write_mrc(tmp_path / "mics" / "far.mrc", generate_micrograph(SYNTHETIC, species, 2, 0).image, pixel_size=2.5)
    checkpoint = make_checkpoint(tmp_path / "best.pt", facts=replace(FACTS, patch_size=64, scale=32 / DIAMETER,
                                                                     pixel_size_angstrom=1.0))
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(checkpoint, tmp_path / "mics", tmp_path / "picks", "--stride", "16")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "2.5 Å/px" in error and "--force" in error and "\n" not in error
    assert not (tmp_path / "picks").exists()
    summary = pick_cli(checkpoint, tmp_path / "mics", tmp_path / "picks", "--stride", "16", "--force")
    assert summary["picked"] == 1
    entry = json.loads((tmp_path / "picks" / "manifest.json").read_text())["micrographs"][0]
    assert (entry["pixel_size"], entry["size_ratio"], entry["diameter_px"]) == (2.5, 2.5, DIAMETER / 2.5)


def test_unknown_pixel_sizes_fall_back_to_pixels_and_say_so(project, tmp_path, capsys):
    root, checkpoint = project
    pick_cli(checkpoint, root / "MotionCorr" / "job002" / "Movies", tmp_path / "picks", "--stride", "16")
    out = capsys.readouterr().out
    assert out.count("pixel size unknown") == 1 and "2 micrographs" in out


def test_mrc_header_pixel_size_is_read_and_zero_means_unknown(tmp_path):
    assert read_pixel_size(write_mrc(tmp_path / "a.mrc", np.zeros((8, 8)), pixel_size=0.85)) == pytest.approx(0.85)
    assert read_pixel_size(write_mrc(tmp_path / "b.mrc", np.zeros((8, 8)))) is None
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "c.png")
    assert read_pixel_size(tmp_path / "c.png") is None


def test_a_relion_micrograph_star_is_a_micrograph_list_with_its_pixel_size(project, tmp_path):
    root, checkpoint = project
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnMicrographPixelSize": [0.9]})
    listing = pd.DataFrame({"rlnMicrographName": [f"MotionCorr/job002/Movies/mic_{i}.mrc" for i in range(2)],
                            "rlnOpticsGroup": [1, 1]})
    star = root / "CtfFind" / "job003" / "micrographs_ctf.star"
    star.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"optics": optics, "micrographs": listing}, star)
    summary = pick_cli(checkpoint, star, tmp_path / "picks", "--stride", "16")
    entries = json.loads((tmp_path / "picks" / "manifest.json").read_text())["micrographs"]
    assert summary["picked"] == 2 and [e["pixel_size"] for e in entries] == [0.9, 0.9]


def test_a_rerun_accepts_its_own_nested_relion_folders_and_keeps_a_later_rethreshold(project, tmp_path):
    root, checkpoint = project
    out = tmp_path / "picks"
    movies = root / "MotionCorr" / "job002" / "Movies"
    pick_cli(checkpoint, movies, out, "--stride", "16", "--relion-project-dir", "/")  # subfolder 4+ levels deep
    assert list(out.glob("**/mic_0_autopick.star"))[0].parent != out / "Movies"
    threshold_picks.main(["--output-dir", str(out), "--threshold", "1.5", "--formats", "relion", "csv"])
    again = pick_cli(checkpoint, movies, out, "--stride", "16", "--relion-project-dir", "/")
    assert (again["picked"], again["outputs"]) == (0, None)
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    assert (outputs["threshold"], outputs["formats"]) == (1.5, ["csv", "relion"])


def test_micrographs_behind_a_symlink_keep_the_name_the_user_gave(project, tmp_path):
    root, checkpoint = project
    (tmp_path / "Micrographs").symlink_to(root / "MotionCorr" / "job002" / "Movies")
    pick_cli(checkpoint, tmp_path / "Micrographs", tmp_path / "External" / "job005", "--stride", "16",
             "--relion-project-dir", str(tmp_path))
    listing = starfile.read(tmp_path / "External" / "job005" / "autopick.star")
    assert listing["rlnMicrographName"].tolist() == ["Micrographs/mic_0.mrc", "Micrographs/mic_1.mrc"]


def test_one_bad_micrograph_does_not_block_a_rerun_at_a_new_threshold(project, tmp_path):
    root, checkpoint = project
    mics = tmp_path / "mics"
    mics.mkdir()
    (mics / "good.mrc").write_bytes((root / "MotionCorr" / "job002" / "Movies" / "mic_0.mrc").read_bytes())
    (mics / "bad.mrc").write_bytes(b"not an mrc" * 100)
    with pytest.warns(UserWarning, match="bad.mrc"):
        pick_cli(checkpoint, mics, tmp_path / "picks", "--stride", "16")
    with pytest.warns(UserWarning, match="bad.mrc"):
        summary = pick_cli(checkpoint, mics, tmp_path / "picks", "--stride", "16", "--threshold", "-1")
    assert (summary["failed"], summary["outputs"]["threshold"]) == (1, -1.0)


def test_overlays_left_out_are_removed_and_a_threshold_beside_a_count_is_refused(picked, tmp_path, capsys):
    _, out, _ = picked
    copy = copy_picks(out, tmp_path / "copy")
    threshold_picks.main(["--output-dir", str(copy), "--threshold", "3", "--overlays", "0"])
    assert not list((copy / "overlays").glob("*.png"))
    with pytest.raises(SystemExit):
        threshold_picks.main(["--output-dir", str(copy), "--threshold", "0", "--expected-particles", "5"])
    assert "pass one of them" in capsys.readouterr().err


def test_an_mrc_header_of_one_angstrom_with_the_cell_equal_to_the_grid_is_unknown(tmp_path):
    with mrcfile.new(tmp_path / "placeholder.mrc") as mrc:
        mrc.set_data(np.zeros((8, 8), np.float32))
        mrc.header.cella = (8.0, 8.0, 1.0)
    assert read_pixel_size(tmp_path / "placeholder.mrc") is None
    assert read_pixel_size(write_mrc(tmp_path / "real.mrc", np.zeros((8, 8)), pixel_size=1.06)) == pytest.approx(1.06)

"""The label and micrograph-list files RELION, cryoSPARC and crYOLO users have, read through read_coordinates:
RELION job folders and their autopick.star / manualpick.star, particles.star with refined offsets, cryoSPARC
.cs particle files, crYOLO .cbox, RELION micrographs STAR lists; each bad input a one-line InputError."""
import numpy as np
import pandas as pd
import pytest
import starfile

from common.errors import InputError
from conftest import SHARED_DATA, RunsCode
from datasets.io.coordinates import read_coordinates
from datasets.io.star_lists import micrographs_from_star, read_star_pixel_size

RELION_SAMPLE = SHARED_DATA / "relion_autopick_sample"


@pytest.fixture
def relion_sample():
    if not RELION_SAMPLE.is_dir():
        pytest.skip(f"real data not found at {RELION_SAMPLE} (only present beside the developers' checkout)")
    return RELION_SAMPLE


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def autopick_coordinates(x, y, fom):
    """A per-micrograph coordinate file's loop, with the columns RELION's autopicker writes."""
    return pd.DataFrame({"rlnCoordinateX": x, "rlnCoordinateY": y, "rlnClassNumber": [0] * len(x),
                         "rlnAutopickFigureOfMerit": fom, "rlnAnglePsi": [-999.0] * len(x)})


def relion_autopick_job(project, job="AutoPick/job006", kind="autopick"):
    """A RELION 5 pick job in `project`: <job>/Movies/<mic>_<kind>.star per micrograph and <job>/<kind>.star
    listing them with project-relative paths, plus the job's bookkeeping files."""
    picks = {"mic_001": ([100.5, 2000.25], [300.75, 40.0], [0.9, 0.4]), "mic_002": ([10.0], [20.0], [1.5])}
    (project / job / "Movies").mkdir(parents=True)
    for stem, (x, y, fom) in picks.items():
        starfile.write({"": autopick_coordinates(x, y, fom)}, project / job / "Movies" / f"{stem}_{kind}.star")
    listing = pd.DataFrame({"rlnMicrographName": [f"MotionCorr/job002/Movies/{stem}.mrc" for stem in picks],
                            "rlnMicrographCoordinates": [f"{job}/Movies/{stem}_{kind}.star" for stem in picks]})
    starfile.write({"coordinate_files": listing}, project / job / f"{kind}.star")
    (project / job / "job.star").write_text("data_job\n\n_rlnJobTypeLabel relion.autopick.log\n")
    (project / job / "note.txt").write_text("++++ Executing new job on Mon Jan 1\n")
    return project / job, picks


def assert_picks(table, picks):
    assert sorted(table) == sorted(picks)
    for stem, (x, y, fom) in picks.items():
        np.testing.assert_array_equal(table[stem][:, [0, 1, 3]], np.column_stack([x, y, fom]))
        assert np.isnan(table[stem][:, 2]).all()


# ---- RELION jobs: autopick.star, manualpick.star, job folders

def test_autopick_star_paths_relative_to_the_project(tmp_path, monkeypatch):
    job, picks = relion_autopick_job(tmp_path / "project")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the project folder is found from the job folder, not the cwd
    assert_picks(read_coordinates(job / "autopick.star"), picks)
    assert_picks(read_coordinates(job), picks)  # the job folder: its autopick.star, not job.star or note.txt
    assert read_star_pixel_size(job / "autopick.star") is None


def test_coordinate_list_relative_to_its_own_folder_or_the_cwd(tmp_path, monkeypatch):
    job, picks = relion_autopick_job(tmp_path / "project")
    moved = tmp_path / "copied_picks"  # a job folder copied out of its project, paths rewritten beside it
    (moved / "Movies").mkdir(parents=True)
    for file in (job / "Movies").iterdir():
        (moved / "Movies" / file.name).write_bytes(file.read_bytes())
    listing = starfile.read(job / "autopick.star")
    listing["rlnMicrographCoordinates"] = listing["rlnMicrographCoordinates"].str.replace("AutoPick/job006/", "")
    starfile.write({"coordinate_files": listing}, moved / "autopick.star")
    assert_picks(read_coordinates(moved), picks)
    elsewhere = tmp_path / "runs" / "picks"  # pick_particles.py --output-dir runs/picks, run from the project
    elsewhere.mkdir(parents=True)
    (elsewhere / "autopick.star").write_bytes((job / "autopick.star").read_bytes())
    monkeypatch.chdir(tmp_path / "project")
    assert_picks(read_coordinates(elsewhere / "autopick.star"), picks)
    (moved / "Movies" / "mic_001_autopick.star").unlink()
    with pytest.raises(InputError) as error:
        read_coordinates(moved)
    assert one_line(error).startswith(
        f"coordinate file Movies/mic_001_autopick.star listed in {moved / 'autopick.star'} not found under {moved} "
        f"or any folder above it, or the current folder {tmp_path / 'project'}; run from the RELION project folder")


def test_manualpick_job_and_missing_coordinate_file(tmp_path, monkeypatch):
    job, picks = relion_autopick_job(tmp_path / "project", job="ManualPick/job004", kind="manualpick")
    monkeypatch.chdir(tmp_path)
    assert_picks(read_coordinates(job), picks)
    (job / "Movies" / "mic_002_manualpick.star").unlink()
    with pytest.raises(InputError) as error:
        read_coordinates(job)
    message = one_line(error)
    assert message.startswith(f"coordinate file ManualPick/job004/Movies/mic_002_manualpick.star listed in "
                              f"{job / 'manualpick.star'} not found under {tmp_path / 'project'}")
    assert "the current folder" in message and "run from the RELION project folder" in message


def test_relion3_job_folder_with_coords_suffix(tmp_path):
    job = tmp_path / "AutoPick" / "job010"
    (job / "Movies" / "day2").mkdir(parents=True)
    (job / "coords_suffix_autopick.star").write_text("CtfFind/job003/micrographs_ctf.star\n")
    (job / "run.out").write_text("done\n")
    (job / "note.txt").write_text("relion_autopick --i CtfFind/job003/micrographs_ctf.star\n")
    starfile.write({"": autopick_coordinates([5.0], [6.0], [0.1])}, job / "Movies" / "a_autopick.star")
    starfile.write({"": autopick_coordinates([7.0, 8.0], [9.0, 10.0], [0.2, 0.3])},
                   job / "Movies" / "day2" / "b_autopick.star")
    table = read_coordinates(job)
    assert sorted(table) == ["a", "b"]
    np.testing.assert_array_equal(table["b"][:, :2], [[7, 9], [8, 10]])


def test_folder_of_subfolders_and_flat_folder_bookkeeping(tmp_path):
    picks = tmp_path / "picks"
    (picks / "Movies").mkdir(parents=True)
    starfile.write({"": autopick_coordinates([1.0], [2.0], [0.5])}, picks / "Movies" / "m1_manualpick.star")
    np.testing.assert_array_equal(read_coordinates(picks)["m1"][:, [0, 1, 3]], [[1, 2, 0.5]])
    extract = tmp_path / "Extract" / "job012"  # a job folder's own particles.star; job.star is bookkeeping
    extract.mkdir(parents=True)
    (extract / "job.star").write_text("data_job\n\n_rlnJobTypeLabel relion.extract\n")
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [3.0], "rlnCoordinateY": [4.0],
                                               "rlnMicrographName": ["MotionCorr/job002/Movies/m9.mrc"]})},
                   extract / "particles.star")
    np.testing.assert_array_equal(read_coordinates(extract)["m9"][:, :2], [[3, 4]])


def test_real_relion_autopick_folder(relion_sample):
    table = read_coordinates(relion_sample / "autopick")
    assert list(table) == ["Ucsf_stack_1142_DW"] and table["Ucsf_stack_1142_DW"].shape == (45, 4)
    np.testing.assert_allclose(table["Ucsf_stack_1142_DW"][0, [0, 1, 3]], [839.125024, 19.979167, 0.624705])
    assert read_star_pixel_size(relion_sample / "autopick" / "Ucsf_stack_1142_DW_autopick.star") is None
    assert read_coordinates(relion_sample)["Ucsf_stack_1142_DW"].shape == (45, 4)  # the pick files below it


# ---- RELION particles.star: refined offsets and optics groups

def relion5_optics(groups):
    """A particles.star `data_optics` block as RELION 5's Extract writes it: {group: image pixel size}."""
    return pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups], "rlnOpticsGroup": list(groups),
        "rlnMtfFileName": ["mtf_k3_300kV.star"] * len(groups),
        "rlnMicrographOriginalPixelSize": [0.4] * len(groups),  # the movies' (super-resolution): never used
        "rlnVoltage": [300.0] * len(groups), "rlnSphericalAberration": [2.7] * len(groups),
        "rlnAmplitudeContrast": [0.1] * len(groups), "rlnImagePixelSize": list(groups.values()),
        "rlnImageSize": [256] * len(groups), "rlnImageDimensionality": [2] * len(groups),
        "rlnCtfDataAreCtfPremultiplied": [0] * len(groups)})


def relion5_particles():
    return pd.DataFrame({
        "rlnCoordinateX": [1000.0, 2000.0, 300.0], "rlnCoordinateY": [500.0, 1500.0, 700.0],
        "rlnAutopickFigureOfMerit": [1.2, 0.8, 2.5], "rlnClassNumber": [1, 1, 2],
        "rlnAnglePsi": [10.0, 20.0, 30.0],
        "rlnImageName": ["000001@Extract/job012/Movies/mic_001.mrcs", "000002@Extract/job012/Movies/mic_001.mrcs",
                         "000001@Extract/job012/Movies/mic_002.mrcs"],
        "rlnMicrographName": ["MotionCorr/job002/Movies/mic_001.mrc", "MotionCorr/job002/Movies/mic_001.mrc",
                              "MotionCorr/job002/Movies/mic_002.mrc"],
        "rlnOpticsGroup": [1, 1, 2], "rlnDefocusU": [12000.0] * 3, "rlnAngleRot": [0.0] * 3,
        "rlnAngleTilt": [90.0] * 3, "rlnOriginXAngst": [3.3, -6.6, 4.2], "rlnOriginYAngst": [-1.65, 0.0, -2.1],
        "rlnRandomSubset": [1, 2, 1]})


def test_particles_star_subtracts_refined_offsets(tmp_path):
    """RELION re-extracts a refined particle at Coordinate - OriginAngst / pixel size (preprocessing.cpp)."""
    path = tmp_path / "run_data.star"
    starfile.write({"optics": relion5_optics({1: 1.65, 2: 0.7}), "particles": relion5_particles()}, path)
    table = read_coordinates(path)
    np.testing.assert_allclose(table["mic_001"][:, :2], [[1000 - 2, 500 + 1], [2000 + 4, 1500]], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["mic_002"][:, :2], [[300 - 6, 700 + 3]], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(table["mic_001"][:, 3], [1.2, 0.8])
    with pytest.raises(InputError) as error:
        read_star_pixel_size(path)
    assert "different pixel sizes (0.7 to 1.65 Å/px)" in one_line(error) and "--pixel-size" in str(error.value)
    optics = relion5_optics({1: 1.65, 2: 1.65}).assign(rlnMicrographPixelSize=[0.825, 0.825])
    starfile.write({"optics": optics, "particles": relion5_particles()}, path, overwrite=True)
    assert read_star_pixel_size(path) == 0.825  # the micrographs' pixel, not the (binned) particle images'
    np.testing.assert_allclose(read_coordinates(path)["mic_002"][:, :2], [[300 - 4.2 / 0.825, 700 + 2.1 / 0.825]])


def test_old_relion_data_star_offsets_in_pixels(tmp_path):
    (tmp_path / "run_it025_data.star").write_text(
        "\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnMicrographName #3\n_rlnOriginX #4\n"
        "_rlnOriginY #5\n_rlnDetectorPixelSize #6\n_rlnMagnification #7\n"
        " 1024.000000 512.000000 Micrographs/m1.mrc 2.500000 -1.000000 5.000000 50000.000000\n")
    np.testing.assert_array_equal(read_coordinates(tmp_path / "run_it025_data.star")["m1"][:, :2], [[1021.5, 513]])


def test_star_errors_name_the_file_and_what_it_holds(tmp_path):
    starfile.write({"particles": relion5_particles()}, tmp_path / "no_optics.star")
    with pytest.raises(InputError) as error:
        read_coordinates(tmp_path / "no_optics.star")
    assert "no_optics.star" in one_line(error) and "_rlnOriginXAngst" in str(error.value)
    micrographs = pd.DataFrame({"rlnMicrographName": ["MotionCorr/job002/Movies/a.mrc"], "rlnOpticsGroup": [1]})
    starfile.write({"optics": relion5_optics({1: 1.0}), "micrographs": micrographs}, tmp_path / "micrographs_ctf.star")
    with pytest.raises(InputError) as error:
        read_coordinates(tmp_path / "micrographs_ctf.star")
    assert one_line(error) == (
        f"cannot read RELION star file {tmp_path / 'micrographs_ctf.star'}: no loop with _rlnCoordinateX and "
        f"_rlnCoordinateY (found data_optics, data_micrographs); pass a particles.star, a job's autopick.star or "
        f"manualpick.star, or a per-micrograph coordinate .star")


# ---- cryoSPARC .cs

def write_cs(path, fields):
    """A .cs file as cryoSPARC writes one: numpy's .npy format of a structured array (under the .cs name)."""
    dtype = [(name, values.dtype, values.shape[1:]) for name, values in fields.items()]
    array = np.zeros(len(next(iter(fields.values()))), dtype=dtype)
    for name, values in fields.items():
        array[name] = values
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return array


def cryosparc_particles():
    return {"uid": np.array([11, 12, 13], dtype=np.uint64),
            "blob/path": np.array([b"J5/extract/mic_a_particles.mrc"] * 3),
            "location/micrograph_uid": np.array([7, 7, 8], dtype=np.uint64),
            "location/micrograph_path": np.array([b"J3/motioncorrected/001_mic_a_patch_aligned_doseweighted.mrc",
                                                  b"J3/motioncorrected/001_mic_a_patch_aligned_doseweighted.mrc",
                                                  b"J3/motioncorrected/002_mic_b_patch_aligned_doseweighted.mrc"]),
            "location/micrograph_shape": np.array([[3838, 3710]] * 3, dtype=np.uint32),  # (height, width)
            "location/center_x_frac": np.array([0.25, 0.5, 0.9], dtype=np.float32),
            "location/center_y_frac": np.array([0.125, 0.75, 0.1], dtype=np.float32),
            "pick_stats/ncc_score": np.array([0.4, 0.3, 0.6], dtype=np.float32)}


def test_cryosparc_cs_fractions_times_the_micrograph_shape(tmp_path):
    array = write_cs(tmp_path / "J12_passthrough_particles.cs", cryosparc_particles())
    table = read_coordinates(tmp_path / "J12_passthrough_particles.cs", default_diameter=180)
    assert sorted(table) == ["001_mic_a_patch_aligned_doseweighted", "002_mic_b_patch_aligned_doseweighted"]
    x = array["location/center_x_frac"].astype(np.float64) * 3710
    y = array["location/center_y_frac"].astype(np.float64) * 3838
    np.testing.assert_array_equal(table["001_mic_a_patch_aligned_doseweighted"][:, :3],
                                  [[x[0], y[0], 180], [x[1], y[1], 180]])
    np.testing.assert_array_equal(table["002_mic_b_patch_aligned_doseweighted"][0, [0, 1, 3]],
                                  [x[2], y[2], np.float32(0.6)])
    assert table["001_mic_a_patch_aligned_doseweighted"][0, :2].tolist() == [927.5, 479.75]


def test_cryosparc_cs_errors(tmp_path):
    fields = {name: values for name, values in cryosparc_particles().items() if not name.startswith("location/")}
    write_cs(tmp_path / "J12_particles.cs", fields)
    with pytest.raises(InputError) as error:
        read_coordinates(tmp_path / "J12_particles.cs")
    message = one_line(error)
    assert message.startswith(f"cannot read cryoSPARC .cs file {tmp_path / 'J12_particles.cs'}: no particle locations")
    assert "fields found: uid, blob/path, pick_stats/ncc_score" in message and "passthrough" in message
    (tmp_path / "compressed.cs").write_bytes(b"\x94CSDAT" + bytes(40))
    with pytest.raises(InputError, match="compressed.cs: it is in cryosparc-tools' compressed format"):
        read_coordinates(tmp_path / "compressed.cs")
    marker = tmp_path / "code_ran"
    with open(tmp_path / "pickled.cs", "wb") as handle:
        np.save(handle, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled.cs"):
        read_coordinates(tmp_path / "pickled.cs")
    assert not marker.exists()
    (tmp_path / "folder").mkdir()
    write_cs(tmp_path / "folder" / "J12_passthrough_particles.cs", cryosparc_particles())
    with pytest.raises(InputError, match="pass a cryoSPARC .cs file itself"):
        read_coordinates(tmp_path / "folder")


# ---- crYOLO .cbox

CBOX = """
data_global

_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
1000.0 2000.0 <NA> 220 220 <NA> 160 170 0.93 <NA> <NA>
10.0 20.0 <NA> 220 200 <NA> <NA> <NA> 0.31 <NA> <NA>
"""


def test_cryolo_cbox_corner_plus_half_the_box(tmp_path):
    (tmp_path / "mic_007.cbox").write_text(CBOX)
    np.testing.assert_array_equal(read_coordinates(tmp_path / "mic_007.cbox")["mic_007"],
                                  [[1110, 2110, 165, 0.93], [120, 120, 210, 0.31]])
    (tmp_path / "old.cbox").write_text("1000\t2000\t220\t220\t0.93\t160\t170\n")  # before crYOLO 1.8
    np.testing.assert_array_equal(read_coordinates(tmp_path / "old.cbox", micrograph="m")["m"],
                                  [[1110, 2110, 165, 0.93]])
    (tmp_path / "odd.cbox").write_text("data_other\n\nloop_\n_CoordinateX #1\n5\n")
    with pytest.raises(InputError) as error:
        read_coordinates(tmp_path / "odd.cbox")
    assert "odd.cbox: no data_cryolo loop with _CoordinateX _CoordinateY _Width _Height (found data_other)" \
        in one_line(error)


# ---- RELION micrograph lists

def relion_micrographs_ctf(project, names, pixel_sizes):
    """CtfFind/job003/micrographs_ctf.star listing `names` (project-relative), optics groups 1.. of `pixel_sizes`."""
    optics = pd.DataFrame({"rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(pixel_sizes))],
                           "rlnOpticsGroup": list(range(1, len(pixel_sizes) + 1)),
                           "rlnMicrographOriginalPixelSize": [size / 2 for size in pixel_sizes],
                           "rlnVoltage": [300.0] * len(pixel_sizes), "rlnSphericalAberration": [2.7] * len(pixel_sizes),
                           "rlnAmplitudeContrast": [0.1] * len(pixel_sizes), "rlnMicrographPixelSize": pixel_sizes})
    micrographs = pd.DataFrame({"rlnCtfImage": [name.replace(".mrc", ".ctf:mrc") for name in names],
                                "rlnMicrographName": names,
                                "rlnMicrographMetadata": [name.replace(".mrc", ".star") for name in names],
                                "rlnOpticsGroup": [1 + i % len(pixel_sizes) for i in range(len(names))],
                                "rlnAccumMotionTotal": [12.0] * len(names), "rlnDefocusU": [11000.0] * len(names),
                                "rlnCtfMaxResolution": [3.5] * len(names)})
    path = project / "CtfFind" / "job003" / "micrographs_ctf.star"
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"optics": optics, "micrographs": micrographs}, path, overwrite=True)
    return path


def test_micrographs_from_star(tmp_path, monkeypatch):
    project = tmp_path / "project"
    names = [f"MotionCorr/job002/Movies/mic_{i:03d}.mrc" for i in range(3)]
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"")
    star = relion_micrographs_ctf(project, names, [0.83])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    listed = micrographs_from_star(star)
    assert listed.paths == [project / name for name in names]
    assert listed.pixel_size == 0.83 and listed.pixel_sizes == [0.83] * 3 and read_star_pixel_size(star) == 0.83
    star = relion_micrographs_ctf(project, names, [0.83, 1.1])
    listed = micrographs_from_star(star, project_dir=project)
    assert listed.pixel_sizes == [0.83, 1.1, 0.83] and listed.pixel_size is None
    (project / names[1]).unlink()
    with pytest.raises(InputError) as error:
        micrographs_from_star(star)
    assert one_line(error).startswith(f"micrograph {names[1]} listed in {star} not found under {project}")


def test_micrograph_list_errors(tmp_path):
    starfile.write({"particles": relion5_particles().drop(columns="rlnMicrographName")}, tmp_path / "p.star")
    with pytest.raises(InputError) as error:
        micrographs_from_star(tmp_path / "p.star")
    assert one_line(error) == (f"{tmp_path / 'p.star'} lists no micrographs: no loop with _rlnMicrographName "
                               f"(found data_particles); pass a RELION micrographs.star or micrographs_ctf.star")
    with pytest.raises(InputError, match="absent.star"):
        micrographs_from_star(tmp_path / "absent.star")

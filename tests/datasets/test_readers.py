"""Micrograph readers, normalisation and resampling; coordinate readers and writers of every format."""
import json
import warnings

import mrcfile
import numpy as np
import pytest
from PIL import Image

from common.errors import InputError
from conftest import SHARED_DATA
from datasets.io import coordinates
from datasets.io.coordinates import (COLUMNS, drop_outside, make_particles, micrograph_stem, read_box, read_coco,
                                     read_coordinates, read_cryoppp_csv, read_star, read_topaz_txt, write_box,
                                     write_coco, write_cryoppp_csv, write_star, write_topaz_txt)
from datasets.io.micrographs import list_micrographs, normalize_to_uint8, prepare_micrograph, read_micrograph, rescale

RELION_SAMPLE = SHARED_DATA / "relion_autopick_sample"


@pytest.fixture
def relion_sample():
    if not RELION_SAMPLE.is_dir():
        pytest.skip(f"real data not found at {RELION_SAMPLE}")
    return RELION_SAMPLE


def gradient(height=40, width=60):
    rows, cols = np.mgrid[:height, :width]
    return (rows * 3 + cols * 2).astype(np.float32)


def gaussian_blob(shape, centre_xy, sigma):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    squared = (cols - centre_xy[0]) ** 2 + (rows - centre_xy[1]) ** 2
    return np.exp(-squared / (2 * sigma ** 2)).astype(np.float32)


def weighted_centre(image):
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]]
    return (cols * image).sum() / image.sum(), (rows * image).sum() / image.sum()


# ---- micrographs

def test_list_micrographs_sorted_case_insensitive(tmp_path):
    for name in ("b.MRC", "a.jpg", "c.TIFF", "notes.txt", "d.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.mrc").mkdir()
    assert [p.name for p in list_micrographs(tmp_path)] == ["a.jpg", "b.MRC", "c.TIFF", "d.png"]
    with pytest.raises(InputError, match="missing_folder"):
        list_micrographs(tmp_path / "missing_folder")


def test_read_mrc_2d_and_stack(tmp_path):
    image = gradient()
    mrcfile.new(tmp_path / "single.mrc", image).close()
    np.testing.assert_array_equal(read_micrograph(tmp_path / "single.mrc"), image)

    stack = np.stack([image, image + 100])
    mrcfile.new(tmp_path / "stack.mrcs", stack).close()
    with pytest.warns(UserWarning, match="stack.mrcs"):
        first = read_micrograph(tmp_path / "stack.mrcs")
    np.testing.assert_array_equal(first, image)
    assert first.dtype == np.float32


@pytest.mark.parametrize("name, mode, tolerance", [
    ("gray.png", "L", 0), ("deep.png", "I;16", 0), ("float.tif", "F", 0), ("rgb.tiff", "RGB", 1),
    ("lossy.jpg", "L", 8)])
def test_read_pillow_formats(tmp_path, name, mode, tolerance):
    image = gradient()
    pixels = {"L": image.astype(np.uint8), "I;16": (image * 100).astype(np.uint16), "F": image,
              "RGB": np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)}[mode]
    Image.fromarray(pixels).save(tmp_path / name)
    expected = image * 100 if mode == "I;16" else image
    read = read_micrograph(tmp_path / name)
    assert read.dtype == np.float32 and read.shape == (40, 60)
    assert np.abs(read - expected).max() <= tolerance


def test_read_real_relion_mrc(relion_sample):
    path = relion_sample / "micrographs" / "Ucsf_stack_1142_DW.mrc"
    image = read_micrograph(path)
    assert image.shape == (927, 959) and image.dtype == np.float32


def test_corrupt_micrographs_name_the_file(tmp_path):
    noise = np.random.default_rng(0).bytes(4096)
    (tmp_path / "noise.mrc").write_bytes(noise)
    (tmp_path / "noise.jpg").write_bytes(noise)
    mrcfile.new(tmp_path / "cut.mrc", gradient()).close()
    (tmp_path / "cut.mrc").write_bytes((tmp_path / "cut.mrc").read_bytes()[:2000])
    for name in ("noise.mrc", "noise.jpg", "cut.mrc", "absent.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError, match=name) as error:
                read_micrograph(tmp_path / name)
        assert "\n" not in str(error.value)


def test_normalize_to_uint8_statistics():
    image = np.random.default_rng(1).normal(50.0, 10.0, (512, 512)).astype(np.float32)
    image[0, :8] = 1e6
    out = normalize_to_uint8(image, clip_sigma=4.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert abs(np.median(out) - 128) <= 2
    assert abs(out.std() - 255 / 8) < 2
    assert (out[0, :8] == 255).all()
    np.testing.assert_array_equal(normalize_to_uint8(np.full((30, 20), 7.5)), np.full((30, 20), 128))


def test_normalize_falls_back_to_std_when_mad_is_zero():
    image = np.zeros((100, 100), np.float32)
    image[:10] = 1.0
    out = normalize_to_uint8(image)
    assert out[0, 0] > out[50, 50]


def test_rescale_shape_and_centre():
    image = gaussian_blob((200, 300), (120.0, 80.0), 6.0)
    assert rescale(image, 1) is image
    for scale in (0.25, 0.37, 1 / 3, 2.0):
        small = rescale(image, scale)
        assert small.shape == (round(200 * scale), round(300 * scale)) and small.dtype == np.float32
        x, y = weighted_centre(small)
        assert abs(x - 120.0 * scale) < 0.5 and abs(y - 80.0 * scale) < 0.5
        scale_y, scale_x = small.shape[0] / 200, small.shape[1] / 300
        np.testing.assert_allclose((x, y), (120.5 * scale_x - 0.5, 80.5 * scale_y - 0.5), atol=0.01)


def test_rescale_is_anti_aliased():
    checkerboard = (np.indices((90, 90)).sum(axis=0) % 2).astype(np.float32)
    assert rescale(checkerboard, 0.3).std() < 0.05 * checkerboard.std()


def test_prepare_micrograph_composes_rescale_normalize(tmp_path):
    image = np.random.default_rng(2).normal(0, 1, (64, 96)).astype(np.float32)
    mrcfile.new(tmp_path / "m.mrc", image).close()
    loaded, scale_xy = prepare_micrograph(read_micrograph(tmp_path / "m.mrc"), 0.5, 3.0)
    assert loaded.shape == (32, 48) and loaded.dtype == np.uint8 and scale_xy == (0.5, 0.5)
    np.testing.assert_array_equal(loaded, normalize_to_uint8(rescale(image, 0.5), 3.0))


# ---- coordinates: round trips

def example_table():
    return {"mic_a": make_particles([10.25, 200.5, 37.0], [15.75, 99.125, 300.0], 108.0, [0.5, 0.25, 0.125]),
            "mic_b": make_particles([55.0], [66.0], 108.0, [0.75])}


def test_make_particles_columns():
    particles = make_particles([1, 2], [3, 4], score=[0.1, 0.2])
    assert particles.shape == (2, len(COLUMNS)) and particles.dtype == np.float64
    assert np.isnan(particles[:, 2]).all() and particles[1, 3] == 0.2
    assert make_particles([], []).shape == (0, 4)


def test_star_round_trip(tmp_path):
    table = example_table()
    write_star(tmp_path / "picks.star", table, {"mic_a": "MotionCorr/job002/mic_a.mrc"})
    assert not (tmp_path / "picks.star.tmp").exists()
    assert "MotionCorr/job002/mic_a.mrc" in (tmp_path / "picks.star").read_text()
    read = read_star(tmp_path / "picks.star")
    assert sorted(read) == ["mic_a", "mic_b"]
    for stem, particles in table.items():
        np.testing.assert_allclose(read[stem][:, [0, 1, 3]], particles[:, [0, 1, 3]], atol=1e-6)
        assert np.isnan(read[stem][:, 2]).all()


def test_cryoppp_csv_round_trip(tmp_path):
    particles = example_table()["mic_a"]
    write_cryoppp_csv(tmp_path / "mic_a.csv", particles)
    np.testing.assert_array_equal(read_cryoppp_csv(tmp_path / "mic_a.csv")["mic_a"], particles)
    unscored = make_particles([1.5, 2.0], [3.0, 4.0], 50.0)
    write_cryoppp_csv(tmp_path / "plain.csv", unscored)
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == "X-Coordinate,Y-Coordinate,Diameter"
    np.testing.assert_array_equal(read_cryoppp_csv(tmp_path / "plain.csv", micrograph="m")["m"], unscored)


def test_box_round_trip(tmp_path):
    particles = example_table()["mic_a"]
    write_box(tmp_path / "mic_a.box", particles, box_size=108)
    first = (tmp_path / "mic_a.box").read_text().splitlines()[0].split("\t")
    assert first == [str(round(10.25 - 54)), str(round(15.75 - 54)), "108", "108"]
    read = read_box(tmp_path / "mic_a.box")["mic_a"]
    assert np.abs(read[:, :2] - particles[:, :2]).max() <= 0.5
    assert (read[:, 2] == 108).all() and np.isnan(read[:, 3]).all()


def test_topaz_round_trip(tmp_path):
    table = example_table()
    write_topaz_txt(tmp_path / "picks.txt", table)
    header = (tmp_path / "picks.txt").read_text().splitlines()[0]
    assert header.split("\t") == ["image_name", "x_coord", "y_coord", "score"]
    read = read_topaz_txt(tmp_path / "picks.txt")
    for stem, particles in table.items():
        assert np.abs(read[stem][:, :2] - particles[:, :2]).max() <= 0.5
        np.testing.assert_array_equal(read[stem][:, 3], particles[:, 3])


def test_coco_round_trip(tmp_path):
    table = example_table()
    images = {"mic_a": {"file_name": "mic_a.jpg", "width": 400, "height": 400, "id": 7},
              "mic_b": {"file_name": "mic_b.jpg", "width": 400, "height": 400, "id": 9},
              "mic_empty": {"file_name": "mic_empty.jpg", "width": 400, "height": 400, "id": 11}}
    write_coco(tmp_path / "instances.json", table, images)
    coco = json.loads((tmp_path / "instances.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "particle", "supercategory": ""}]
    assert coco["annotations"][0]["bbox"] == [10.25 - 54, 15.75 - 54, 108.0, 108.0]
    read, read_images = read_coco(tmp_path / "instances.json")
    assert read_images == images and read["mic_empty"].shape == (0, 4)
    for stem, particles in table.items():
        np.testing.assert_allclose(read[stem], particles, rtol=0, atol=1e-9)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("old")
    with pytest.raises(InputError, match="mic_x"):
        write_coco(path, {"mic_x": make_particles([1.0], [2.0])}, {"mic_x": {"file_name": "mic_x.mrc",
                                                                           "width": 9, "height": 9}})
    assert path.read_text() == "old" and not (tmp_path / "instances.json.tmp").exists()


# ---- coordinates: real files and format details

def test_real_coco_matches_cryoppp_csv(empiar10017):
    table, images = read_coco(empiar10017 / "annotations" / "instances_test.json")
    assert len(table) == 5 and sum(len(p) for p in table.values()) == 3131
    for stem, particles in table.items():
        assert images[stem]["width"] == 4096 and images[stem]["file_name"] == stem + ".jpg"
        assert (particles[:, 2] == 108).all()
        csv = read_cryoppp_csv(empiar10017 / "particle_coordinates" / f"{stem}.csv")[stem]
        np.testing.assert_array_equal(particles[:, :3], csv[:, :3])


def test_real_relion_autopick_star(relion_sample):
    table = read_coordinates(relion_sample / "autopick" / "Ucsf_stack_1142_DW_autopick.star")
    assert list(table) == ["Ucsf_stack_1142_DW"]
    particles = table["Ucsf_stack_1142_DW"]
    assert particles.shape == (45, 4)
    np.testing.assert_allclose(particles[0, [0, 1, 3]], [839.125024, 19.979167, 0.624705])


def test_coco_skips_dummy_boxes_and_rejects_unknown_images(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "dir/a.jpg", "width": 50, "height": 40},
                       {"id": 2, "file_name": "b.png", "width": 50, "height": 40}],
            "annotations": [{"image_id": 1, "bbox": [10, 20, 30, 30], "iscrowd": 0},
                            {"image_id": 1, "bbox": [0, 0, 0, 0], "iscrowd": 0},
                            {"image_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 1}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    table, _ = read_coco(tmp_path / "c.json")
    np.testing.assert_array_equal(table["a"], [[25.0, 35.0, 30.0, np.nan]])
    assert table["b"].shape == (0, 4)
    coco["annotations"].append({"image_id": 5, "bbox": [1, 1, 5, 5]})
    (tmp_path / "orphan.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="orphan.json: an annotation refers to image_id 5 not listed"):
        read_coco(tmp_path / "orphan.json")
    coco["annotations"][-1] = {"image_id": 1, "bbox": [1, 2, 3]}
    (tmp_path / "short_bbox.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="short_bbox.json: a bbox is not 4 numbers"):
        read_coco(tmp_path / "short_bbox.json")
    coco["images"][1]["file_name"] = "other/a.png"
    (tmp_path / "twice.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="twice.json: two images are named a;"):
        read_coco(tmp_path / "twice.json")
    (tmp_path / "nokeys.json").write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="nokeys.json.*annotations"):
        read_coco(tmp_path / "nokeys.json")


def test_star_formats_and_names(tmp_path):
    (tmp_path / "mic7_manualpick.star").write_text(
        "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n 10.5 20.5\n 30 40\n")
    assert list(read_star(tmp_path / "mic7_manualpick.star")) == ["mic7"]
    (tmp_path / "particles.star").write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.0\n\n"
        "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnMicrographName #3\n"
        "1 2 Movies/x.mrc\n3 4 Movies/y.mrc\n5 6 Movies/x.mrc\n")
    table = read_star(tmp_path / "particles.star")
    np.testing.assert_array_equal(table["x"][:, :2], [[1, 2], [5, 6]])
    np.testing.assert_array_equal(table["y"][:, :2], [[3, 4]])
    (tmp_path / "empty_autopick.star").write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n")
    assert read_star(tmp_path / "empty_autopick.star")["empty"].shape == (0, 4)
    (tmp_path / "angles.star").write_text("data_\n\nloop_\n_rlnAnglePsi #1\n 10\n")
    with pytest.raises(InputError, match="angles.star.*_rlnCoordinateX"):
        read_star(tmp_path / "angles.star")


def test_csv_header_only_and_errors(tmp_path):
    (tmp_path / "none.csv").write_text("X-Coordinate,Y-Coordinate,Diameter\n")
    assert read_cryoppp_csv(tmp_path / "none.csv")["none"].shape == (0, 4)
    (tmp_path / "missing.csv").write_text("X-Coordinate,Diameter\n1,2\n")
    with pytest.raises(InputError, match="missing.csv.*Y-Coordinate"):
        read_cryoppp_csv(tmp_path / "missing.csv")
    (tmp_path / "typo.csv").write_text("X-Coordinate,Y-Coordinate\n1,2\n3,x4\n")
    with pytest.raises(InputError, match="typo.csv.*row 2"):
        read_cryoppp_csv(tmp_path / "typo.csv")


CSV_VARIANTS = {
    "plain": "X-Coordinate,Y-Coordinate,Diameter,Confidence Score\n10,20,30,0.5\n1.5e1,2,30,1\n",
    "spaces": "X-Coordinate, Y-Coordinate, Diameter\n 10, 20, 30\n11 , 21 , 31\n",
    "bom_reordered": "\ufeffDiameter,Y-Coordinate,X-Coordinate\n30,20,10\n",
    "extra_column": "X-Coordinate,Y-Coordinate,Class\n10,20,3\n",
    "blank_score": "X-Coordinate,Y-Coordinate,Diameter,Confidence Score\n10,20,30,\n11,21,31,0.2\n",
    "blank_line": "X-Coordinate,Y-Coordinate\n10,20\n\n11,21\n",
    "quoted": 'X-Coordinate,Y-Coordinate\n"10","20"\n',
    "header_only": "X-Coordinate,Y-Coordinate\n",
}


@pytest.mark.parametrize("variant", sorted(CSV_VARIANTS))
def test_cryoppp_csv_fast_path_reads_what_pandas_reads(tmp_path, monkeypatch, variant):
    path = tmp_path / f"{variant}.csv"
    path.write_text(CSV_VARIANTS[variant], encoding="utf-8")
    fast = read_cryoppp_csv(path)[variant]
    assert (coordinates._cryoppp_numbers(path) is None) == (variant in ("blank_score", "blank_line"))  # pandas'
    monkeypatch.setattr(coordinates, "_cryoppp_numbers", lambda _path: None)
    np.testing.assert_array_equal(fast, read_cryoppp_csv(path)[variant])
    assert len(fast) == CSV_VARIANTS[variant].count("\n") - 1 - (variant == "blank_line")


def test_cryoppp_csv_without_coordinates_is_an_error_on_either_path(tmp_path):
    (tmp_path / "nan.csv").write_text("X-Coordinate,Y-Coordinate\n1,2\nnan,4\n")
    with pytest.raises(InputError, match="nan.csv.*row 2"):
        read_cryoppp_csv(tmp_path / "nan.csv")


def test_box_extra_columns_and_empty(tmp_path):
    (tmp_path / "m.box").write_text("10\t20\t100\t100\t-3\n  0 0 50 50 -3\n")
    np.testing.assert_array_equal(read_box(tmp_path / "m.box")["m"][:, :3], [[60, 70, 100], [25, 25, 50]])
    (tmp_path / "e.box").write_text("")
    assert read_box(tmp_path / "e.box", micrograph="other")["other"].shape == (0, 4)
    (tmp_path / "short.box").write_text("1 2\n")
    with pytest.raises(InputError, match="short.box"):
        read_box(tmp_path / "short.box")


def test_topaz_keeps_numeric_names(tmp_path):
    (tmp_path / "picks.txt").write_text("image_name\tx_coord\ty_coord\n007\t1\t2\n007.mrc\t3\t4\n010\t5\t6\n")
    table = read_topaz_txt(tmp_path / "picks.txt")
    assert sorted(table) == ["007", "010"] and table["007"].shape == (2, 4)


def test_read_coordinates_dispatch_folder_and_defaults(tmp_path):
    folder = tmp_path / "coords"
    folder.mkdir()
    write_cryoppp_csv(folder / "a.csv", make_particles([1.0], [2.0], 30.0))
    write_box(folder / "b.box", make_particles([60.0], [70.0]), box_size=100)
    write_topaz_txt(folder / "more.txt", {"a": make_particles([5.0], [6.0], score=0.5)})
    table = read_coordinates(folder, default_diameter=80.0)
    assert sorted(table) == ["a", "b"]
    np.testing.assert_array_equal(table["a"][:, :3], [[1, 2, 30], [5, 6, 80]])
    assert read_coordinates(folder / "a.csv", micrograph="renamed").keys() == {"renamed"}
    (tmp_path / "picks.xyz").write_text("")
    with pytest.raises(InputError, match=r"picks.xyz.*\.star.*\.cbox.*\.cs"):
        read_coordinates(tmp_path / "picks.xyz")
    with pytest.raises(InputError, match="nowhere"):
        read_coordinates(tmp_path / "nowhere.star")
    with pytest.raises(InputError, match="empty_dir"):
        (tmp_path / "empty_dir").mkdir()
        read_coordinates(tmp_path / "empty_dir")


def test_drop_outside_and_stems():
    particles = make_particles([-1, 0, 99.5, 100, 50], [5, 5, 5, 5, 100])
    kept, dropped = drop_outside(particles, width=100, height=100)
    np.testing.assert_array_equal(kept[:, 0], [0, 99.5])
    assert dropped == 3
    assert micrograph_stem("MotionCorr/job002/Falcon_2012.06_0.MRC") == "Falcon_2012.06_0"
    assert micrograph_stem("Falcon_2012.06_0") == "Falcon_2012.06_0"


def test_topaz_names_with_spaces_stay_whole(tmp_path):
    """Topaz files are tab-separated: a micrograph name with a space keeps its picks (issue seen with EPU names)."""
    from datasets.io.coordinates import make_particles, read_topaz_txt, write_topaz_txt
    table = {"grid 1 square 2": make_particles([10.0, 20.0], [30.0, 40.0], score=[1.5, 0.5]),
             "plain": make_particles([5.0], [6.0], score=[2.0])}
    write_topaz_txt(tmp_path / "picks.txt", table)
    back = read_topaz_txt(tmp_path / "picks.txt")
    assert sorted(back) == ["grid 1 square 2", "plain"]
    np.testing.assert_allclose(back["grid 1 square 2"][:, [0, 1, 3]], [[10, 30, 1.5], [20, 40, 0.5]])
    (tmp_path / "hand.txt").write_text("image_name x_coord y_coord\nmic_a 1 2\nmic_a   3   4\n")
    np.testing.assert_allclose(read_topaz_txt(tmp_path / "hand.txt")["mic_a"][:, :2], [[1, 2], [3, 4]])

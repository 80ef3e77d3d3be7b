"""--labels partial: a user's annotations are all there is. Nothing is hidden, no truth is read, and pi
comes from the expected particle count, checked against the pi that the truth counts on synthetic data
(without a count pi is estimated: tests/training/test_prior_estimate.py)."""
import json

import numpy as np
import pytest

import make_synthetic_dataset
import preprocess_coco_full_dataset
from datasets.io.coordinates import read_cryoppp_csv
from datasets.prior import expected_missing, partial_labels_windows
from datasets.sampling.coco_pu import coco_pu_samples, isolated_count

SYNTHETIC = ["--num-train", "4", "--num-val", "1", "--num-test", "1", "--width", "512", "--height", "512",
             "--particle-diameter", "32", "--density", "0.2", "--label-fraction", "0.6", "--seed", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial") / "data"
    make_synthetic_dataset.main(["--output-dir", str(root), *SYNTHETIC])
    return root


def preprocess(data, out, *extra):
    return preprocess_coco_full_dataset.main(["--data-root", str(data), "--output-dir", str(out), "--patch-size",
                                              "64", "--target-diameter", "32", "--chunk-size", "300", *extra])


def chunk_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.pt"))}


def mean_particles(data, split="train"):
    counts = [len(read_cryoppp_csv(p, micrograph=p.stem)[p.stem]) for p in sorted((data / "ground_truth").glob(
        f"*{split}_*.csv"))]
    return float(np.mean(counts))


def test_partial_mode_reads_no_truth_and_hides_nothing(data, tmp_path, capsys):
    with_truth = preprocess(data, tmp_path / "a", "--expected-particles", "40")
    assert "ground_truth is ignored" in capsys.readouterr().out
    wrong = tmp_path / "copy"
    for path in data.rglob("*"):  # the same data with a deliberately wrong ground_truth/
        target = wrong / path.relative_to(data)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.parent.name == "ground_truth":
            target.write_text("X-Coordinate,Y-Coordinate,Diameter\n5,5,32\n")
        else:
            target.write_bytes(path.read_bytes())
    preprocess(wrong, tmp_path / "b", "--expected-particles", "40")
    assert chunk_bytes(tmp_path / "a") == chunk_bytes(tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["config"]["labels"] == "partial" and meta["priors"]["method"] == "expected_particles"
    train = with_truth["splits"]["train"]
    assert train["background"] == 0 and train["unlabeled"] > 0  # truth-free: nobody knows what they hold
    labeled = sum(len(read_cryoppp_csv(p, micrograph=p.stem)[p.stem])
                  for p in (data / "particle_coordinates").glob("*train_*.csv"))
    assert train["labeled_positive"] == labeled  # every annotation is a labeled positive


def test_expected_particles_prior_is_within_a_quarter_of_the_counted_one(data, tmp_path):
    """The truth-counted pi of the very same unlabeled set comes from --labels complete --hide-ratio 0 with
    ground_truth/ read and the same count (it sets how many windows are drawn): same seed, same draws, same
    windows, but each judged by the truth. A window is a
    particle only when centred on one, which few are: 50 random windows per particle make the counted pi
    (about 100 centred windows) steady enough for a 25% tolerance."""
    windows = ("--random-per-pos", "50", "--expected-particles", str(mean_particles(data)))
    counted = preprocess(data, tmp_path / "truth", "--labels", "complete", *windows)["priors"]["prior_unlabeled"]
    estimate = preprocess(data, tmp_path / "user", *windows)
    assert chunk_bytes(tmp_path / "truth").keys() == chunk_bytes(tmp_path / "user").keys()
    assert estimate["priors"]["prior_unlabeled"] == pytest.approx(counted, rel=0.25)


def test_expected_particles_bad_values(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess(data, tmp_path / "o", "--expected-particles", "0")
    assert exit_info.value.code == 2 and "--expected-particles 0.0 must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess(data, tmp_path / "o", "--hide-ratio", "0.3")
    assert "with --labels partial they are all there is" in capsys.readouterr().err
    below = r"below the labeled count of \d+ train micrograph\(s\) \(e.g. synthetic_train_"
    with pytest.warns(UserWarning, match=below):
        summary = preprocess(data, tmp_path / "low", "--expected-particles", "2")
    assert 0 <= summary["priors"]["prior_unlabeled"] < 0.2


def test_unlabeled_windows_follow_the_expected_count_not_the_clicks():
    """With unlabeled_windows_per: expected, a micrograph's far negatives and random windows are counted per
    particle it holds (the expected count), so clicking fewer of them does not shrink its unlabeled set."""
    image = np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8)
    particles = np.random.default_rng(1).uniform(40, 472, (30, 2))
    settings = dict(size=64, diameter=32.0, labels="partial", hide_ratio=0.0, neg_per_pos=1.0, neg_min_distance=1.5,
                    offcentre_per_pos=1.0, offcentre_distance=(0.5, 1.0), offcentre_label="known_negative",
                    random_per_pos=2.0, centre_radius=0.125, train=True)
    for clicked in (30, 10, 3):
        _, per_expected = coco_pu_samples(image, particles[:clicked], None, None, np.random.default_rng(2),
                                          window_particles=30, **settings)
        _, per_labeled = coco_pu_samples(image, particles[:clicked], None, None, np.random.default_rng(2), **settings)
        assert (per_expected["negatives_wanted"], per_expected["random_windows"]) == (30, 60)
        assert (per_labeled["negatives_wanted"], per_labeled["random_windows"]) == (clicked, 2 * clicked)
        assert per_expected["offcentre_wanted"] == per_labeled["offcentre_wanted"] == clicked  # beside the clicked
    _, more_clicked = coco_pu_samples(image, particles, None, None, np.random.default_rng(2), window_particles=10,
                                      **settings)
    assert more_clicked["random_windows"] == 60  # never fewer than per labeled particle


def test_unlabeled_windows_per_must_be_known(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess(data, tmp_path / "o", "--expected-particles", "40", "--set",
                   "preprocessing.unlabeled_windows_per=area")
    assert "unlabeled_windows_per 'area' is not one of expected, labeled" in capsys.readouterr().err


def test_a_new_count_is_refused_where_it_drew_the_unlabeled_windows(data, tmp_path, capsys):
    """The default draws the unlabeled windows per expected particle: another count would draw others."""
    out = tmp_path / "chunks"
    first = preprocess(data, out, "--expected-particles", "40")
    assert "(far and random windows drawn per expected particle, 40 per micrograph)" in capsys.readouterr().out
    labeled_basis = preprocess(data, tmp_path / "labeled", "--expected-particles", "40", "--set",
                               "preprocessing.unlabeled_windows_per=labeled")
    assert "(far and random windows drawn per labeled particle)" in capsys.readouterr().out
    assert first["splits"]["train"]["unlabeled"] > labeled_basis["splits"]["train"]["unlabeled"]
    with pytest.raises(SystemExit):
        preprocess(data, out, "--expected-particles", "60")
    assert "different config (window_particles)" in capsys.readouterr().err


def test_a_count_over_windows_per_labeled_particle_keeps_or_redraws_them_as_asked(data, tmp_path, capsys):
    """Chunks whose windows were drawn per labeled particle (as every run without a count draws them): a
    count with the default basis is refused with both fixes named; the labeled basis keeps the chunks and
    recomputes pi."""
    out, per_labeled = tmp_path / "chunks", ["--set", "preprocessing.unlabeled_windows_per=labeled"]
    first = preprocess(data, out, "--expected-particles", str(mean_particles(data) / 2), *per_labeled)
    before = chunk_bytes(out)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        preprocess(data, out, "--expected-particles", str(mean_particles(data)))
    error = capsys.readouterr().err
    assert "different config (window_particles)" in error and "use --no-resume to redraw them" in error
    assert "--set preprocessing.unlabeled_windows_per=labeled" in error
    kept = preprocess(data, out, "--expected-particles", str(mean_particles(data)), *per_labeled)
    assert kept["already_complete"] and chunk_bytes(out) == before
    assert first["priors"]["prior_unlabeled"] < kept["priors"]["prior_unlabeled"] < 1
    assert json.loads((out / "metadata.json").read_text())["priors"] == kept["priors"]


def test_isolated_particles_are_those_a_diameter_from_every_other():
    particles = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0], [100.0, 131.9], [300.0, 300.0]])
    assert isolated_count(particles, diameter=32.0) == 1  # (100, 100)-(100, 131.9) are 31.9 apart, (0, 0)-(10, 0) 10
    assert isolated_count(particles, diameter=31.9) == 3
    assert isolated_count(particles[:1], diameter=32.0) == 1 and isolated_count(particles[:0], diameter=32.0) == 0


def test_the_count_places_unlabeled_particles_where_the_labeled_ones_sit():
    """m = E - n particles nobody labeled; the share of them in the free area is the share of the labeled
    ones that lie in the free area of the others (1 below two labels, or where metadata predates it)."""
    missing = expected_missing(100.0)
    assert missing({"n_labeled": 40, "labeled_isolated": 10}) == (60.0, 15.0)
    assert missing({"n_labeled": 1, "labeled_isolated": 1}) == (99.0, 99.0)
    assert missing({"n_labeled": 40}) == (60.0, 60.0)
    assert missing({"n_labeled": 120, "labeled_isolated": 0}) == (0.0, 0.0)
    entry = {"split": "train", "status": "done", "free_area_px": 1e6, "area_px": 4e6, "unlabeled_known_positive": 0,
             "unknown_far": 100, "unknown_random": 100, "n_labeled": 40}
    uniform, _ = partial_labels_windows([entry], missing, 32.0, 0.125)
    packed, unlabeled = partial_labels_windows([{**entry, "labeled_isolated": 10}], missing, 32.0, 0.125)
    far_hit = 60 * np.pi * 4 ** 2 / 1e6  # m pi r^2 / F, r = centre_radius x D, the rule of every window
    random_hit = 60 * np.pi * 4 ** 2 / 4e6
    assert unlabeled == 200
    assert uniform == pytest.approx(100 * (far_hit + random_hit))
    assert packed == pytest.approx(100 * (far_hit / 4 + random_hit))


def test_a_window_is_a_particle_only_when_centred_on_one():
    """One rule for every unlabeled window of a complete split, as for the random windows and val/test: a
    particle centre within centre_radius x D. A far window that only overlaps an unannotated particle
    (here 8 px = D/4 off it) is background, as the off-centre windows are; pi counts the same rule."""
    image = np.zeros((512, 512), dtype=np.uint8)
    annotated, truth = np.array([[100.0, 100.0]]), np.array([[100.0, 100.0], [400.0, 400.0]])
    samples, _ = coco_pu_samples(image, annotated, truth, None, np.random.default_rng(0), size=64, diameter=32.0,
                                 labels="complete", hide_ratio=0.0, neg_per_pos=1e4, neg_min_distance=1.5,
                                 offcentre_per_pos=0.0, offcentre_distance=(0.5, 1.0), offcentre_label="unlabeled",
                                 random_per_pos=0.0, centre_radius=0.125, train=True)
    offset = np.linalg.norm(samples["xy"] - [400.0, 400.0], axis=1)
    far = samples["label"] == 0
    assert np.any(far & (offset == 0)) and np.any(far & (offset == 8))  # the grid holds both
    hidden = far & (samples["true_label"] == 1)
    assert np.array_equal(np.flatnonzero(hidden), np.flatnonzero(far & (offset <= 4)))

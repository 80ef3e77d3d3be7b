"""Non-maximum suppression and pick-level evaluation: hand-computed cases, properties, the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate_picks
from common.errors import InputError
from datasets.io.coordinates import read_coco, write_box, write_cryoppp_csv, write_star, write_topaz_txt
from picking.evaluate import match_picks, precision_recall, precision_recall_curve, save_pr_curve_png
from picking.nms import nms_points, peak_picks


def _pairwise_min(xs, ys):
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    return gaps.min() if len(points) > 1 else np.inf


def _table(rows):
    """stem -> [N, 4] (x, y, diameter, score) from lists of tuples."""
    return {stem: np.array(r, dtype=np.float64).reshape(-1, 4) for stem, r in rows.items()}


# ---------------------------------------------------------------- NMS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_distance", [2.5, 6.0, 9.9])
def test_peak_picks_never_keeps_two_picks_closer_than_min_distance(seed, min_distance):
    rng = np.random.default_rng(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.normal(size=(1, 96, 96))).float(), 5, 1, 2)[0]
    levels = torch.from_numpy(rng.integers(0, 3, size=(96, 96))).float()  # large plateaus of ties
    flat = torch.zeros(96, 96)  # one plateau over the whole map
    for ys, xs, scores in peak_picks(torch.stack([smooth, levels, flat]), min_distance):
        assert len(ys) > 0
        assert _pairwise_min(xs, ys) >= min_distance
        assert np.all(np.diff(scores) <= 0)
    ys, xs, scores = peak_picks(smooth, min_distance)
    assert scores[0] == smooth.max().item()  # the global maximum is always a pick


def test_peak_picks_finds_planted_peaks_with_threshold_and_max_picks():
    yy, xx = np.mgrid[0:64, 0:80]
    centres = [(10, 12, 3.0), (40, 15, 2.0), (30, 60, 1.0), (34, 66, 0.5)]  # (y, x, height)
    score = sum(h * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0) for y, x, h in centres)
    ys, xs, scores = peak_picks(torch.tensor(score), min_distance=10, threshold=0.9)
    # the 0.5 peak is 7.2 px from the 1.0 peak: suppressed by the distance, and below the threshold
    assert list(zip(ys, xs)) == [(10, 12), (40, 15), (30, 60)]
    np.testing.assert_allclose(scores, [3.0, 2.0, 1.0], atol=0.01)
    ys, xs, _ = peak_picks(torch.tensor(score), min_distance=10, max_picks=2)
    assert list(zip(ys, xs)) == [(10, 12), (40, 15)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_peak_picks_cuda_matches_spacing():
    score = torch.rand(2, 128, 128, device="cuda")
    for ys, xs, _ in peak_picks(score, 5.0, threshold=0.5):
        assert _pairwise_min(xs, ys) >= 5.0


def test_nms_points_greedy_by_score():
    xy = np.array([[0, 0], [3, 4], [10, 0], [6, 8], [1, 1]])
    scores = np.array([1.0, 2.0, 3.0, 0.5, 4.0])
    # (1,1) first; (10,0) free; (3,4) is 3.6 from (1,1): gone; (0,0) 1.4 from (1,1): gone;
    # (6,8) is 5.0 from (3,4), which is suppressed, and 8.6 from (1,1): kept
    assert nms_points(xy, scores, 5.0).tolist() == [4, 2, 3]
    assert nms_points(np.zeros((0, 2)), np.zeros(0), 5.0).tolist() == []


# ---------------------------------------------------------------- matching and the curve

# Micrograph "a": particles of diameter 10 (radius 5) at
#   T1 (0,0)  T2 (100,0)  T3 (200,0)  T4 (300,0)  T5 (400,0)  T6 (408,0)
# Micrograph "b": one particle T7 (50,50) and no picks. Micrograph "c": picks only (no ground truth).
TARGETS = _table({
    "a": [(0, 0, 10, np.nan), (100, 0, 10, np.nan), (200, 0, 10, np.nan), (300, 0, 10, np.nan),
          (400, 0, 10, np.nan), (408, 0, 10, np.nan)],
    "b": [(50, 50, 10, np.nan)],
})
PICKS = _table({
    "a": [(1, 0, 10, 0.9),      # P1a: 1 px from T1                      -> TP
          (409, 0, 10, 0.8),    # P6: 1 px from T6, 9 px from T5         -> TP (T6)
          (103, 0, 10, 0.7),    # P2: 3 px from T2                       -> TP
          (0, 2, 10, 0.6),      # P1b: a second pick on T1               -> FP (T1 taken by P1a, closer)
          (404, 0, 10, 0.5),    # Pmid: 4 px from both T5 and T6         -> TP (T5: P6 needs T6)
          (205, 0, 10, 0.5),    # P3: exactly at the radius of T3        -> FP (in range means d < r)
          (500, 500, 10, 0.2)], # Pfar                                   -> FP
    "c": [(5, 5, 10, 0.9), (50, 5, 10, 0.1)],
})
# 7 particles. Steps in descending score (0.5 holds two picks, one step):
#   score  picks  TP  precision  recall
#   0.9     1     1   1          1/7
#   0.8     2     2   1          2/7
#   0.7     3     3   1          3/7
#   0.6     4     3   3/4        3/7
#   0.5     6     4   2/3        4/7
#   0.2     7     4   4/7        4/7
# AUPRC = sum precision x recall gained = (1 + 1 + 1 + 2/3) / 7 = 11/21
# F1 per step: 2/8, 4/9, 6/10, 18/33, 16/26 = 8/13 (best, at 0.5), 4/7
EXPECTED_PRECISION = [1, 1, 1, 3 / 4, 2 / 3, 4 / 7]
EXPECTED_RECALL = [1 / 7, 2 / 7, 3 / 7, 3 / 7, 4 / 7, 4 / 7]


def test_match_picks_one_to_one_within_radius():
    a_picks, a_targets = PICKS["a"], TARGETS["a"]
    assert match_picks(a_picks[:, :2], a_targets[:, :2], 5.0).tolist() == [0, 5, 1, -1, 4, -1, -1]
    assert match_picks(np.zeros((0, 2)), a_targets[:, :2], 5.0).tolist() == []
    assert match_picks(a_picks[:, :2], np.zeros((0, 2)), 5.0).tolist() == [-1] * 7


def test_match_picks_is_one_assignment_whatever_the_scores():
    # As Topaz: the closer pick takes the particle even when it scores lower, so the higher-scored
    # pick 3 px away is the false positive: precision 0 at the first step, 1/2 at the second.
    picks = np.array([[3, 0], [1, 0]])
    assert match_picks(picks, np.array([[0, 0]]), 5.0).tolist() == [-1, 0]
    curve = precision_recall_curve(np.array([False, True]), np.array([0.9, 0.1]), 1)
    np.testing.assert_allclose(curve.precision, [0, 0.5])
    assert curve.auprc == pytest.approx(0.5)


def test_precision_recall_on_the_hand_made_case():
    result = precision_recall(PICKS, TARGETS)
    curve = result.curve
    np.testing.assert_allclose(curve.threshold, [0.9, 0.8, 0.7, 0.6, 0.5, 0.2])
    np.testing.assert_allclose(curve.precision, EXPECTED_PRECISION)
    np.testing.assert_allclose(curve.recall, EXPECTED_RECALL)
    np.testing.assert_allclose(curve.f1, [2 / 8, 4 / 9, 6 / 10, 18 / 33, 8 / 13, 4 / 7])
    assert curve.auprc == pytest.approx(11 / 21)
    assert curve.at_best() == pytest.approx(
        {"f1": 8 / 13, "precision": 2 / 3, "recall": 4 / 7, "threshold": 0.5, "n_matched": 4})
    assert (curve.n_targets, curve.n_picks) == (7, 7)
    assert result.ignored_micrographs == ["c"] and result.n_ignored_picks == 2
    np.testing.assert_allclose(result.radius, 5.0)
    a, b = result.per_micrograph
    # "a" at threshold 0.5: 6 picks kept, 4 TP of 6 particles; its own AUPRC = (1+1+1+2/3)/6
    assert a == pytest.approx({"stem": "a", "n_targets": 6, "n_picks": 7, "n_picks_kept": 6, "n_matched": 4,
                               "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "auprc": 11 / 18})
    # "b" has a particle and no picks: a miss
    assert b == pytest.approx({"stem": "b", "n_targets": 1, "n_picks": 0, "n_picks_kept": 0, "n_matched": 0,
                               "precision": 0.0, "recall": 0.0, "f1": 0.0, "auprc": 0.0})


def test_micrograph_selection_radius_and_diameter_defaults():
    only_a = precision_recall(PICKS, TARGETS, micrographs=["a", "zzz"])
    assert only_a.curve.n_targets == 6 and only_a.ignored_micrographs == ["c"]
    # a fixed radius of 3.5 px leaves Pmid (4 px away) unmatched: P1a, P6, P2 remain
    narrow = precision_recall(PICKS, TARGETS, radius=3.5)
    assert narrow.curve.n_matched.max() == 3
    np.testing.assert_allclose(narrow.radius, 3.5)
    no_diameter = {stem: t * [1, 1, np.nan, 1] for stem, t in TARGETS.items()}
    with pytest.raises(InputError, match="--particle-diameter"):
        precision_recall(PICKS, no_diameter)
    assert precision_recall(PICKS, no_diameter, default_diameter=10).curve.auprc == pytest.approx(11 / 21)


def test_ground_truth_as_picks_scores_one_and_empty_picks_zero():
    rng = np.random.default_rng(0)
    targets = {f"m{i}": np.column_stack([rng.uniform(0, 1000, (40, 2)), np.full(40, 20.0), np.full(40, np.nan)])
               for i in range(3)}
    picks = {stem: np.column_stack([t[:, :3], rng.uniform(size=len(t))]) for stem, t in targets.items()}
    result = precision_recall(picks, targets)
    assert result.curve.auprc == pytest.approx(1.0)
    assert result.curve.at_best()["f1"] == pytest.approx(1.0)
    empty = precision_recall({}, targets)
    assert empty.curve.auprc == 0.0 and empty.curve.at_best()["threshold"] is None
    assert [row["n_targets"] for row in empty.per_micrograph] == [40, 40, 40]
    with pytest.raises(InputError, match="no particles"):
        precision_recall(picks, {"m0": np.zeros((0, 4))})


def test_unscored_picks_form_one_step():
    curve = precision_recall_curve(np.array([True, False, True]), np.full(3, np.nan), 4)
    np.testing.assert_allclose([curve.precision[0], curve.recall[0]], [2 / 3, 1 / 2])
    assert curve.auprc == pytest.approx(2 / 3 * 1 / 2)


def test_save_pr_curve_png(tmp_path):
    path = tmp_path / "pr.png"
    save_pr_curve_png(path, np.array(EXPECTED_RECALL), np.array(EXPECTED_PRECISION), "AUPRC 0.524")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (520, 640, 3)
    assert (np.abs(image.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 50  # the curve is drawn


# ---------------------------------------------------------------- the CLI

SUMMARY_KEYS = {"auprc", "best_f1", "precision", "recall", "threshold", "n_targets", "n_picks", "radius",
                "per_micrograph", "curve"}


def _write_case(tmp_path):
    """The hand-made case on disk: STAR picks (+ Topaz txt, box, manifest) and CryoPPP csv ground truth."""
    truth, picks = tmp_path / "truth", tmp_path / "picks"
    for stem, particles in TARGETS.items():
        write_cryoppp_csv(truth / f"{stem}.csv", particles)
    write_star(picks / "picks.star", PICKS)
    write_topaz_txt(picks / "picks.txt", {stem: p * [1, 1, 1, -1] for stem, p in PICKS.items()})  # reversed scores
    write_box(picks / "a.box", PICKS["a"], 10)
    return truth, picks


def test_cli_star_picks_against_csv_ground_truth(tmp_path, capsys):
    truth, picks = _write_case(tmp_path)
    output = tmp_path / "eval" / "summary.json"
    summary = evaluate_picks.main(["--picks", str(picks), "--ground-truth", str(truth), "--output", str(output)])
    written = json.loads(output.read_text())
    assert SUMMARY_KEYS <= set(written) and written["picks_format"] == "relion"
    assert written["auprc"] == pytest.approx(11 / 21) and written["best_f1"] == pytest.approx(8 / 13)
    assert (written["precision"], written["recall"], written["threshold"]) == pytest.approx((2 / 3, 4 / 7, 0.5))
    assert (written["n_targets"], written["n_picks"], written["n_ignored_picks"]) == (7, 7, 2)
    assert written["radius"] == 5.0 and written["curve"]["recall"] == pytest.approx(EXPECTED_RECALL)
    assert [row["stem"] for row in written["per_micrograph"]] == ["a", "b"]
    assert summary["auprc"] == written["auprc"]
    assert Image.open(tmp_path / "eval" / "pr_curve.png").size == (640, 520)
    assert "AUPRC 0.5238" in capsys.readouterr().out


def test_cli_format_manifest_and_micrograph_list(tmp_path):
    truth, picks = _write_case(tmp_path)
    common = ["--picks", str(picks), "--ground-truth", str(truth), "--output", str(tmp_path / "s.json")]
    # Topaz txt with the scores negated: P1a is now last, so the first step is Pfar (FP)
    topaz = evaluate_picks.main(common + ["--format", "topaz"])
    assert topaz["picks_format"] == "topaz" and topaz["auprc"] < 11 / 21
    # the manifest lists a (done) and b (failed): b's particle still counts as a miss
    (picks / "manifest.json").write_text(json.dumps({"micrographs": [
        {"stem": "a", "path": "a.mrc", "n_picks": 7, "status": "done"},
        {"stem": "b", "path": "b.mrc", "n_picks": 0, "status": "failed"}]}))
    listed = evaluate_picks.main(common)
    assert listed["n_targets"] == 7 and listed["failed_micrographs"] == ["b"]
    (tmp_path / "list.txt").write_text("# test micrographs\n/data/a.mrc\n\nzzz\n")
    only_a = evaluate_picks.main(common + ["--micrographs", str(tmp_path / "list.txt")])
    assert only_a["n_targets"] == 6 and only_a["auprc"] == pytest.approx(11 / 18)
    assert only_a["missing_ground_truth"] == ["zzz"]
    fixed = evaluate_picks.main(common + ["--radius", "3.5"])
    assert fixed["radius"] == 3.5 and fixed["radius_rule"] == "3.5 px"


def test_cli_bad_input_exits_2(tmp_path, capsys):
    truth, picks = _write_case(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [["--picks", str(tmp_path / "nowhere"), "--ground-truth", str(truth)],
             ["--picks", str(empty), "--ground-truth", str(truth)],
             ["--picks", str(picks), "--ground-truth", str(truth), "--format", "coco"]]
    (picks / "manifest.json").write_text("{not json")
    cases.append(["--picks", str(picks), "--ground-truth", str(truth)])
    for argv in cases:
        with pytest.raises(SystemExit) as exit_info:
            evaluate_picks.main(argv + ["--output", str(tmp_path / "s.json")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_empty_picks_and_ground_truth_without_diameters(tmp_path):
    truth, _ = _write_case(tmp_path)
    picks = tmp_path / "no_picks"
    write_topaz_txt(picks / "picks.txt", {})
    summary = evaluate_picks.main(["--picks", str(picks), "--ground-truth", str(truth),
                                   "--output", str(tmp_path / "s.json")])
    assert summary["auprc"] == 0.0 and summary["threshold"] is None and summary["n_targets"] == 7
    # STAR ground truth has no diameters: --particle-diameter supplies them (else the error asks for it)
    write_star(tmp_path / "truth.star", TARGETS)
    argv = ["--picks", str(tmp_path / "picks" / "picks.star"), "--ground-truth", str(tmp_path / "truth.star"),
            "--output", str(tmp_path / "t.json")]
    with pytest.raises(SystemExit):
        evaluate_picks.main(argv)
    assert evaluate_picks.main(argv + ["--particle-diameter", "10"])["auprc"] == pytest.approx(11 / 21)


def test_cli_ground_truth_as_picks_on_empiar10017(empiar10017, tmp_path):
    coco = empiar10017 / "annotations" / "instances_test.json"
    targets, _ = read_coco(coco)
    rng = np.random.default_rng(0)
    write_star(tmp_path / "picks" / "picks.star",
               {stem: np.column_stack([t[:, :3], rng.uniform(size=len(t))]) for stem, t in targets.items()})
    summary = evaluate_picks.main(["--picks", str(tmp_path / "picks"), "--ground-truth", str(coco),
                                   "--output", str(tmp_path / "summary.json")])
    assert summary["n_targets"] == 3131 and summary["radius"] == 54.0
    assert summary["auprc"] == pytest.approx(1.0) and summary["best_f1"] == pytest.approx(1.0)

"""The particle count estimated when none is given (BBE): the estimator on known mixtures, its π on
generated micrographs against the π the truth counts (recorded as a suggestion, not used), and its
refusal when there are too few labels."""
import json

import numpy as np
import pytest

import make_synthetic_dataset
import preprocess_coco_full_dataset
import train_pu_fixed_full
from training.prior_estimate import bbe_alpha


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.5])
def test_bbe_recovers_the_mixture_proportion_of_separable_scores(alpha):
    rng = np.random.default_rng(0)
    positives = rng.normal(3, 1, 2000)
    n_u = 4000
    mixed = np.concatenate([rng.normal(3, 1, int(alpha * n_u)), rng.normal(-3, 1, n_u - int(alpha * n_u))])
    assert bbe_alpha(positives, mixed) == pytest.approx(alpha, abs=0.03)


def test_bbe_is_an_upper_bound_when_the_classes_overlap():
    rng = np.random.default_rng(1)
    positives, mixed = rng.normal(1, 1, 2000), np.concatenate([rng.normal(1, 1, 400), rng.normal(0, 1, 3600)])
    assert 0.1 <= bbe_alpha(positives, mixed) <= 1.0


def synthetic(root, *extra):
    make_synthetic_dataset.main(["--output-dir", str(root), "--num-val", "1", "--num-test", "1", "--width", "1024",
                                 "--height", "1024", "--particle-diameter", "32", *extra])
    return root


def preprocess(data, out, *extra):
    return preprocess_coco_full_dataset.main(["--data-root", str(data), "--output-dir", str(out), "--patch-size",
                                              "64", "--target-diameter", "32", *extra])


@pytest.mark.slow
def test_the_estimate_is_within_a_quarter_of_the_pi_the_truth_counts(tmp_path, capsys):
    data = synthetic(tmp_path / "data", "--num-train", "6", "--density", "0.2", "--label-fraction", "0.5",
                     "--seed", "8")
    counted = preprocess(data, tmp_path / "truth", "--labels", "complete")["priors"]["prior_unlabeled"]
    estimate = preprocess(data, tmp_path / "user")["priors"]
    assert "Garg" in estimate["estimator"] and estimate["bbe_prior_unlabeled"] == pytest.approx(counted, rel=0.25)
    assert estimate["prior_unlabeled"] is None and "BBE suggests about" in estimate["method"]
    metadata = json.loads((tmp_path / "user" / "metadata.json").read_text())
    assert metadata["priors"] == estimate and metadata["config"]["labels"] == "partial"
    assert "estimating the particle count from the patches by BBE" in capsys.readouterr().out


def test_too_few_labels_for_an_estimate_is_a_one_line_error_naming_both_fixes(tmp_path, capsys):
    data = synthetic(tmp_path / "data", "--num-train", "2", "--density", "0.05", "--label-fraction", "0.3",
                     "--seed", "3")
    summary = preprocess(data, tmp_path / "chunks")
    assert summary["priors"]["prior_unlabeled"] is None and "too few labels" in summary["priors"]["method"]
    with pytest.raises(SystemExit) as exit_info:
        train_pu_fixed_full.main(["--data-dir", str(tmp_path / "chunks"), "--use-data-prior", "--output-root",
                                  str(tmp_path / "runs"), "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "too few labels" in error and "loss.prior" in error and "--expected-particles" in error

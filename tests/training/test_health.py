"""The warning signs of training/health.py: they fire on a failing run and stay quiet on a healthy one at small pi."""
import math

from training.health import health_warnings


def tags(mask_rate=0.6, predicted=0.1, auc=0.95, prior=None, history=(), consistency=True):
    val = {"predicted_positive_rate": predicted, "auc": auc}
    return [tag for tag, _ in health_warnings({"mask_rate": mask_rate}, val, list(history), consistency, prior)]


def test_a_healthy_run_warns_nothing():
    assert tags() == []


def test_collapse_needs_a_val_auc_near_chance():
    assert tags(predicted=0.0, auc=0.55) == ["collapse_negative"]
    assert tags(predicted=1.0, auc=0.6) == ["collapse_positive"]
    assert tags(predicted=0.0, auc=math.nan) == ["collapse_negative"]
    # EMPIAR-10017 at pi 0.02: no val patch above 0.5, yet particles ranked first: not a collapse
    assert tags(predicted=0.0, auc=0.984) == []


def test_the_high_mask_rate_is_judged_against_the_prior_and_needs_a_poor_val_auc():
    assert tags(mask_rate=0.97, auc=0.6) == ["mask_rate_high"]
    assert tags(mask_rate=0.97, auc=0.6, prior=0.2) == ["mask_rate_high"]
    assert tags(mask_rate=0.97, auc=0.6, prior=0.02) == []  # 98% of the unlabeled windows are background
    assert tags(mask_rate=0.995, auc=0.6, prior=0.02) == ["mask_rate_high"]
    assert tags(mask_rate=0.995, auc=math.nan, prior=0.02) == ["mask_rate_high"]
    # EMPIAR-10146 at F 0.1, epoch 6: a teacher that ranks particles well is confident almost everywhere
    assert tags(mask_rate=0.999, auc=0.86, prior=0.0207) == []
    assert tags(mask_rate=0.1, prior=0.02) == ["mask_rate_low"]
    assert tags(mask_rate=0.999, auc=0.6, consistency=False) == []


def test_each_mask_rate_warning_names_the_key_that_fixes_it():
    def message(mask_rate):
        return health_warnings({"mask_rate": mask_rate}, {"predicted_positive_rate": 0.1, "auc": 0.6}, [], True, 0.02)
    [(tag_low, low)] = message(0.1)
    [(tag_high, high)] = message(0.999)
    assert (tag_low, tag_high) == ("mask_rate_low", "mask_rate_high")
    assert "lower loss.consistency_threshold" in low
    assert "raise loss.consistency_threshold" in high


def test_a_flat_val_auc_warns_after_ten_epochs():
    assert tags(history=[0.9] + [0.89] * 10) == ["val_auc_flat"]
    assert tags(history=[0.9] + [0.89] * 9) == []
    assert tags(history=[0.9] + [0.89] * 9 + [0.91]) == []

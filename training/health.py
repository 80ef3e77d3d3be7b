"""The warning signs of a failing PU run, checked every epoch: printed and logged to TensorBoard."""
import math

FLAT_EPOCHS = 10
MASK_RATE_HIGH = 0.95
COLLAPSE_AUC = 0.7  # a val AUC below this with ~all patches on one side of 0.5 is a collapse


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf: training stops and the last good checkpoint is kept."""


def check_finite(value, step):
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss is {value} at step {step}; stopped, last.pt holds the last good state "
                               f"(lower optimizer.lr or check the prior)")


def health_warnings(train_parts, val_metrics, auc_history, use_consistency, prior=None):
    """(tag, message) pairs for each warning sign present.

    At a small prior pi a good model's probabilities can stay below 0.5 and most unlabeled windows are
    confidently background, so the collapse warnings also need a val AUC near chance (a model that
    ranks particles first has not collapsed). So does the high mask rate, judged against 1 - pi/2: on
    the real sets a teacher that ranks well is confident about 96-100% of the unlabeled windows.
    `use_consistency`: the FixMatch term is on and past its warm-up (the mask rate is not judged before).
    """
    found = []
    mask_rate = train_parts.get("mask_rate")
    mask_rate_ceiling = max(MASK_RATE_HIGH, 1 - prior / 2) if prior else MASK_RATE_HIGH
    predicted, auc = val_metrics.get("predicted_positive_rate"), val_metrics.get("auc", math.nan)
    if use_consistency and mask_rate is not None:
        if mask_rate < 0.20:
            found.append(("mask_rate_low", f"mask rate {mask_rate:.1%} < 20%: consistency threshold too high "
                                           "for this model, lower loss.consistency_threshold"))
        elif mask_rate > mask_rate_ceiling and not auc >= COLLAPSE_AUC:
            found.append(("mask_rate_high", f"mask rate {mask_rate:.1%} > {mask_rate_ceiling:.0%} at val AUC "
                                            f"{auc:.2f}: pseudo labels trusted blindly, raise "
                                            "loss.consistency_threshold"))
    if predicted is not None and not auc >= COLLAPSE_AUC:
        if predicted > 0.99:
            found.append(("collapse_positive", f"the model calls ~every val patch a particle (recall 100%, "
                                               f"val AUC {auc:.2f}): check the prior and the negatives"))
        elif predicted < 0.01:
            found.append(("collapse_negative", f"the model calls ~no val patch a particle (recall 0%, "
                                               f"val AUC {auc:.2f}): check the prior and the labels"))
    if len(auc_history) > FLAT_EPOCHS and max(auc_history[-FLAT_EPOCHS:]) <= max(auc_history[:-FLAT_EPOCHS]):
        found.append(("val_auc_flat", f"val AUC has not improved for {FLAT_EPOCHS} epochs"))
    return found

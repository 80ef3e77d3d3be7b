"""FixMatch consistency (Sohn et al. 2020) for a one-logit particle classifier.

The weak view's prediction (from the EMA teacher when the caller enables it) becomes a hard pseudo
label where it is confident; the strong view is trained towards it with binary cross-entropy.
By default ("selective") only unlabeled patches (label 0) are considered, so strong augmentation
never overrides known particles or known negatives. As in FixMatch the masked loss is averaged over
ALL considered samples, not over the confident ones only.

Prior alignment (when constructed with `prior`, as training does with `loss.align_to_prior`):
distribution alignment as in ReMixMatch, with the PU prior as the target. The teacher's probabilities
are re-weighted by Bayes' rule so that their running mean over considered samples equals pi:
p' = p r / (p r + (1 - p) s), r = pi / m, s = (1 - pi) / (1 - m), m = a running mean of p (momentum
`alignment_momentum`). Without it, most unlabeled patches are background, the confident pseudo labels
are mostly negative, and the model can talk itself into calling
every patch background (confirmation bias); aligned pseudo labels keep about pi of them positive.

Every part is a detached 0-dim tensor (no host-device synchronisation); rates whose denominator is
empty in a batch read 0.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ConsistencyLoss(nn.Module):
    """`forward(weak_logits, strong_logits, labels, true_label=None)` -> (loss, parts).

    `prior`: π to align the teacher's probabilities to (None: no alignment)."""

    def __init__(self, threshold=0.90, lambda_consistency=1.0, selective=True, prior=None, alignment_momentum=0.99):
        super().__init__()
        if prior is not None and not 0.0 < prior < 1.0:
            raise ValueError(f"alignment prior {prior} is outside (0, 1)")
        self.prior = None if prior is None else float(prior)
        self.alignment_momentum = float(alignment_momentum)
        self.register_buffer("mean_probability", torch.tensor(-1.0))
        if not 0.5 <= threshold <= 1.0:
            raise ValueError(f"consistency threshold {threshold} is outside [0.5, 1]; "
                             f"it is the confidence max(p, 1 - p) a pseudo label needs")
        if lambda_consistency < 0.0:
            raise ValueError(f"lambda_consistency {lambda_consistency} is negative; "
                             f"use 0 to switch FixMatch off")
        self.threshold = float(threshold)
        self.lambda_consistency = float(lambda_consistency)
        self.selective = selective

    def forward(self, weak_logits, strong_logits, labels, true_label=None):
        # p: the weak view's particle probability; pseudo labels carry no gradient.
        p = torch.sigmoid(weak_logits.detach().float().reshape(-1))
        # considered: unlabeled patches only when selective, else the whole batch.
        labels = labels.reshape(-1)
        considered = labels == 0 if self.selective else torch.ones_like(labels, dtype=torch.bool)
        # optionally align p to the prior, so that about pi of the considered patches lean positive.
        if self.prior is not None and self.training:
            p = self.aligned(p, considered, self.prior)
        # pseudo: the hard pseudo label; confident: where it is trusted.
        pseudo = p >= 0.5
        confident = torch.maximum(p, 1.0 - p) >= self.threshold
        mask = confident & considered
        n_considered = considered.sum().clamp(min=1)
        # BCE of the strong view against the pseudo label, kept only under the mask ...
        bce = F.binary_cross_entropy_with_logits(strong_logits.float().reshape(-1), pseudo.float(),
                                                 reduction="none")
        # ... and averaged over all considered samples (an empty batch gives 0 with a grad path).
        loss = self.lambda_consistency * (bce * mask).sum() / n_considered
        parts = {
            "consistency_loss": loss.detach(),
            "mask_rate": mask.sum() / n_considered,
            "pseudo_positive_rate": (mask & pseudo).sum() / mask.sum().clamp(min=1),
            "unlabeled_positive_rate": (considered & pseudo).sum() / n_considered,
        }
        if true_label is not None:
            judged = mask & (true_label.reshape(-1) >= 0)
            correct = judged & (pseudo == (true_label.reshape(-1) == 1))
            parts["pseudo_label_accuracy"] = correct.sum() / judged.sum().clamp(min=1)
        return loss, parts

    @torch.no_grad()
    def aligned(self, p, considered, prior):
        """p re-weighted so that the running mean of the considered samples' p becomes the prior."""
        batch_mean = (p * considered).sum() / considered.sum().clamp(min=1)
        first = self.mean_probability < 0
        momentum = self.alignment_momentum
        self.mean_probability.copy_(torch.where(first, batch_mean,
                                                momentum * self.mean_probability + (1 - momentum) * batch_mean))
        m = self.mean_probability.clamp(1e-4, 1 - 1e-4)
        positive, negative = p * (prior / m), (1 - p) * ((1 - prior) / (1 - m))
        return positive / (positive + negative)

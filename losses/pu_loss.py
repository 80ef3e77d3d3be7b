"""Non-negative PU risk (nnPU, Kiryo et al. 2017) for a one-logit particle classifier.

Labels follow the chunk contract: 1 = labeled particle (P), 0 = unlabeled patch (U),
-1 = known negative (PUFP mode, e.g. picks rejected in 2D classification).

With a surrogate loss l(z, y) = sigmoid(-y z) ("sigmoid") or softplus(-y z) ("logistic"):

    positive risk  = prior * mean_P l(f, +1)
    negative risk  = mean_U l(f, -1) - prior * mean_P l(f, -1)

The unbiased risk (uPU) is their sum. As in Kiryo's reference code, nnPU watches the negative risk:
when it falls below -beta the model is overfitting the unlabeled set, so the step is taken on
-gamma * negative risk (pushing it back up) and the reported risk is positive risk - beta; otherwise
both equal the unbiased risk. Known negatives add negative_weight * mean_N l(f, -1) to both.

The branch is a `torch.where` on a 0-dim tensor and all reported parts are detached 0-dim tensors,
so the loss adds no host-device synchronisation beyond the one check that the batch holds positives.
"""
import torch
import torch.nn.functional as F
from torch import nn

SURROGATE_LOSSES = {
    "sigmoid": lambda margin: torch.sigmoid(-margin),
    "logistic": lambda margin: F.softplus(-margin),
}


def check_prior(prior):
    """Raise ValueError unless the class prior pi lies strictly between 0 and 1."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"class prior {prior} is outside (0, 1); set loss.prior to the fraction of "
                         f"particles among unlabeled patches or use the metadata prior (--use-data-prior)")


class PULoss(nn.Module):
    """nnPU / uPU risk; `forward(logits, labels)` returns (tensor to backpropagate, detached parts)."""

    def __init__(self, prior, loss="logistic", beta=0.0, gamma=1.0, nnpu=True, negative_weight=1.0):
        super().__init__()
        check_prior(prior)
        if loss not in SURROGATE_LOSSES:
            raise ValueError(f"unknown PU surrogate loss {loss!r}; choose one of {sorted(SURROGATE_LOSSES)}")
        if beta < 0.0 or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"nnPU needs beta >= 0 and 0 <= gamma <= 1, got beta={beta}, gamma={gamma}")
        self.prior = float(prior)
        self.loss_name = loss
        self.surrogate = SURROGATE_LOSSES[loss]
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.nnpu = nnpu
        self.negative_weight = float(negative_weight)

    def forward(self, logits, labels):
        """logits [B] (any float dtype, computed in float32), labels [B] in {1, 0, -1}."""
        logits = logits.float().reshape(-1)
        labels = labels.reshape(-1)
        positive, unlabeled, negative = (labels == 1).float(), (labels == 0).float(), (labels == -1).float()
        n_positive = positive.sum()
        if not bool(n_positive):
            raise ValueError("a PU batch holds no labeled positive (label 1); "
                             "use the PU batch sampler, which puts positives in every batch")
        loss_as_positive = self.surrogate(logits)
        loss_as_negative = self.surrogate(-logits)
        positive_risk = self.prior * (positive * loss_as_positive).sum() / n_positive
        negative_risk = ((unlabeled * loss_as_negative).sum() / unlabeled.sum().clamp(min=1.0)
                         - self.prior * (positive * loss_as_negative).sum() / n_positive)
        known_negative_risk = (self.negative_weight * (negative * loss_as_negative).sum()
                               / negative.sum().clamp(min=1.0))
        unbiased_risk = positive_risk + negative_risk
        if self.nnpu:
            fired = negative_risk.detach() < -self.beta
            risk = torch.where(fired, positive_risk - self.beta, unbiased_risk)
            objective = torch.where(fired, -self.gamma * negative_risk, unbiased_risk)
        else:
            fired = torch.zeros_like(negative_risk, dtype=torch.bool)
            risk, objective = unbiased_risk, unbiased_risk
        parts = {
            "risk": (risk + known_negative_risk).detach(),
            "positive_risk": positive_risk.detach(),
            "negative_risk": negative_risk.detach(),
            "nn_correction": fired.float(),
            "known_negative_risk": known_negative_risk.detach(),
        }
        return objective + known_negative_risk, parts

"""The PN baseline: supervised BCE that treats every unlabeled patch as a negative (no PU correction)."""
import torch.nn.functional as F
from torch import nn


class PNLoss(nn.Module):
    """`forward(logits, labels) -> (loss, parts)`: label 1 -> positive, 0 (unlabeled) and -1 -> negative."""

    def forward(self, logits, labels):
        target = (labels.reshape(-1) == 1).float()
        loss = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target)
        return loss, {"risk": loss.detach()}

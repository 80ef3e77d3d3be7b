"""An ensemble of patch classifiers trained apart (the same chunks, different seeds): one network whose
logit is the mean of its members' logits. Members disagree where each is unsure, so the mean ranks
picks more steadily than any one of them (docs/results.md, "Choosing on val: an ensemble of seeds")."""
import torch
from torch import nn


class MeanLogitEnsemble(nn.Module):
    """`forward(x)` -> the mean over `members` of their logits, shaped as one member's."""

    def __init__(self, members):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([member(x) for member in self.members]).mean(0)

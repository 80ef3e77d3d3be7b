"""Training losses: nnPU risk (PULoss), FixMatch consistency (ConsistencyLoss), the PN baseline (PNLoss)."""
from losses.consistency import ConsistencyLoss
from losses.pn_loss import PNLoss
from losses.pu_loss import PULoss

__all__ = ["ConsistencyLoss", "PNLoss", "PULoss"]

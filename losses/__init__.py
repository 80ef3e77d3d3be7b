"""Training losses: nnPU risk (PULoss) and FixMatch consistency (ConsistencyLoss)."""
from losses.consistency import ConsistencyLoss
from losses.pu_loss import PULoss, check_prior

__all__ = ["ConsistencyLoss", "PULoss", "check_prior"]

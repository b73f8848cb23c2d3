"""Device and dtype choice shared by every model: CUDA with bf16 (fp16 where bf16 is unsupported)
when present, else CPU, in bf16 where the CPU has native bf16 (AMX, AVX512-BF16) and fp32 elsewhere."""
from __future__ import annotations

import logging

from recaption.errors import RecaptionError, unknown

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | None = None) -> str:
    """The device to run on: CUDA when present unless named; a clear error for a GPU that is not there."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecaptionError(f"--device {device} asked for, but no CUDA GPU is visible (use --device cpu)")
    return device


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run 2-3x faster than fp32 there (Linux; else False)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str | None, device: str):
    """The torch dtype for a device: auto is bf16 on CUDA and on CPUs with native bf16, else float32."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    return getattr(torch, dtype)


def quiet_hub() -> None:
    """Our progress bar is the one users watch; silence transformers' per-load bars."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass


class _Once(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def log_once(prefix: str) -> None:
    """Show each distinct message of the loggers under `prefix` once (bitsandbytes' 8-bit layers
    warn on every matmul: hundreds of identical lines a batch on CPU)."""
    names = [prefix, *(n for n in logging.root.manager.loggerDict if n.startswith(prefix + "."))]
    for name in names:
        lg = logging.getLogger(name)
        if not any(isinstance(f, _Once) for f in lg.filters):
            lg.addFilter(_Once())

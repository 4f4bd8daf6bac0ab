#!/usr/bin/env bash
# The MMA core, the integration (the training stack: peft, TRL) and the AKI model on the lowest transformers aki
# declares, in a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/aki-lowest-transformers}
lowest=$(python3 - <<'PY'
import re, tomllib
requirements = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.search(r">=([\d.]+)", r).group(1) for r in requirements if r.startswith("transformers")))
PY
)
echo "+ transformers ${lowest}.* in ${venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e . "transformers==${lowest}.*" pytest hypothesis peft trl  # the training stack too
"$venv/bin/python" -c "import transformers; print('transformers', transformers.__version__)"
"$venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider tests/test_mma.py tests/integration tests/models

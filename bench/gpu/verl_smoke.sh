#!/usr/bin/env bash
# GPU smoke test of the verl engine: a 0.5B model, two curriculum phases of a few steps at 2K and 4K
# input tokens, real verl (FSDP + vLLM rollouts + Ray) on one GPU node. NOT run in CI (no GPU there);
# nothing in this repository claims it ran. Usage, on a machine with >= 1 CUDA GPU and a verl + vLLM env:
#   VERL_PY=/path/to/verl-env/bin/python MODEL=Qwen/Qwen2.5-0.5B-Instruct DATA=path/to/docqa.parquet \
#     bench/gpu/verl_smoke.sh [OUT_DIR]
# It prints the phase commands (--dry-run), runs the pipeline, then the wall time per phase and the
# retrospective pool carried into phase 2 (from the stage manifests).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/verl_smoke}"
PY="${VERL_PY:-python3}"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
ARGS=(configs/qwenlong_l1_32b.yaml
  "output_dir=$OUT" "model.path=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}" sft.enabled=false
  "data.sources=[{path: ${DATA:?set DATA to a verl/longbench DocQA file}}]" data.max_input_tokens=4096
  "curriculum.phases=[{name: p2k, max_input_tokens: 2048, max_output_tokens: 1024, steps: 3}, {name: p4k, max_input_tokens: 4096, max_output_tokens: 1024, steps: 3}]"
  reward.judge.backend=none reward.combine=rule reward.overlong.buffer_tokens=256 eval.benchmarks=[]
  rl.prompts_per_step=8 rl.mini_batches=2 rl.micro_token_budget=16384 rollout.group_size=4
  verl.nnodes=1 "verl.gpus_per_node=$GPUS" verl.rollout_tensor_parallel=1 verl.sequence_parallel=1
  verl.param_offload=false verl.optimizer_offload=false verl.gen_batch_size=16 verl.test_freq=-1
  "verl.python=$PY" save_every=3)
"$PY" -m longrl.cli pipeline "${ARGS[@]}" --engine verl --dry-run
"$PY" -m longrl.cli pipeline "${ARGS[@]}" --engine verl
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
for m in sorted(pathlib.Path(sys.argv[1], "stages").glob("*/manifest.json")):
    d = json.loads(m.read_text())
    t = (d.get("curriculum") or {}).get("transition") or {}
    print(d["stage"], d["status"], f"{d.get('finished', 0) - d.get('started', 0):.0f}s", d.get("metrics", {}).get("rl/steps"),
          "pool", t.get("retro/pool_size"))
PY

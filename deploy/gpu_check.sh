#!/usr/bin/env bash
# scca GPU check: one script (< 8 minutes) for a machine with a CUDA GPU.
#
# What it does, offline (no model or package is downloaded; vLLM is optional):
#   1. shows the GPU (nvidia-smi) and that torch sees CUDA;
#   2. picks the tiny model: the cached bootstrap (.cache/scca/bootstrap-s0) if present,
#      else a random init built locally (learner.model.build_tiny_model);
#   3. micro-benchmarks on CUDA: HF actor generation tokens/s (64 rows x 40 tokens) and a
#      learner step (forward + backward + AdamW, bf16 autocast) on 128 samples;
#   4. a short `scca run` (learner, 1 HF actor, 1 verifier as separate processes) and prints
#      its step time and trained tokens/s; learner.device / actor.device are set to the
#      device when the config has those fields (else the run uses the services' defaults);
#   5. the GPU smoke tests (pytest -m gpu tests/gpu), vLLM's included when it is installed.
# It does NOT install anything, change the GPU's settings, or need the network.
#
# Usage: deploy/gpu_check.sh            (GPU_CHECK_DEVICE=cpu runs the same on CPU, to test it)
#   env: PY (python, default .venv/bin/python), STEPS (default 20), OUT (work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
STEPS=${STEPS:-20}
OUT=${OUT:-$(mktemp -d /tmp/scca-gpu-check.XXXXXX)}
mkdir -p "$OUT"
START=$(date +%s)
phase() { echo; echo "== $* ($(( $(date +%s) - START ))s)"; }

phase "1. device"
if [ "$DEVICE" = cuda ]; then
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not available"
fi
DEVICE=$DEVICE "$PY" - <<'EOF'
import os, sys, torch
device = os.environ["DEVICE"]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU (torch %s, built for CUDA %s): nothing to check" % (torch.__version__, torch.version.cuda))
name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
try:
    import vllm; v = vllm.__version__
except ImportError:
    v = "not installed"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {name}; vllm {v}")
EOF

phase "2. model"
MODEL=.cache/scca/bootstrap-s0
if [ -f "$MODEL/bootstrap.json" ]; then
  echo "using the cached bootstrap model $MODEL"
else
  MODEL="$OUT/model"
  "$PY" -c "
from learner.model import build_tiny_model, build_tokenizer, save_model_folder
save_model_folder(build_tiny_model(0), build_tokenizer(), '$MODEL')"
  echo "no cached bootstrap: random tiny model written to $MODEL (scca bootstrap builds the trained one)"
fi

phase "3. micro-benchmarks on $DEVICE"
DEVICE=$DEVICE MODEL=$MODEL timeout 180 "$PY" - <<'EOF'
import os, time, torch
from actors.engines.hf import HFEngine
from learner.logprobs import build_batch, token_logprobs
from learner.model import load_model_folder
device, folder = os.environ["DEVICE"], os.environ["MODEL"]
torch.set_num_threads(1)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
engine = HFEngine(folder, threads=1, seed=0, device=device)
prompts = [f"{a}+{a + 7}=" for a in range(8)]
engine.generate(prompts, 2, temperature=1.0, max_new_tokens=8)  # warm-up
t = time.perf_counter()
groups = engine.generate(prompts, 8, temperature=1.0, max_new_tokens=40, batch_size=64)
sync()
n = sum(len(s.token_ids) for g in groups for s in g)
print(f"HF actor generate: {n / (time.perf_counter() - t):.0f} tokens/s ({n} tokens, 64 rows)")
model, tok = load_model_folder(folder)
model = model.to(device).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
rows = [s.token_ids.tolist() for g in groups for s in g] * 2  # 128 samples
batch = build_batch([tok(p)["input_ids"] for p in prompts for _ in range(16)], rows, tok.pad_token_id)
times = []
for i in range(7):
    t = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        logp, mask, _ = token_logprobs(model, batch)
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True); sync()
    times.append(time.perf_counter() - t)
step = sorted(times[2:])[len(times[2:]) // 2]
print(f"learner step (128 samples, {int(mask.sum())} tokens, bf16 autocast={device == 'cuda'}): "
      f"{step * 1000:.1f} ms median, {mask.sum().item() / step:.0f} tokens/s")
EOF

phase "4. short run: learner + 1 HF actor + 1 verifier, $STEPS steps"
SETS=$("$PY" - <<EOF
from protocol.config import ActorConfig, LearnerConfig
out = []
for section, cls in (("learner", LearnerConfig), ("actor", ActorConfig)):
    if "device" in cls.model_fields:
        out.append(f'--set {section}.device="$DEVICE"')
print(" ".join(out))
EOF
)
echo "device overrides: ${SETS:-none (this version runs the services on their default device)}"
# shellcheck disable=SC2086
timeout 300 "$PY" -m deploy.cli run deploy/default.toml --out "$OUT/run" \
  --set model.folder="\"$MODEL\"" --set learner.max_steps="$STEPS" --set learner.eval_every=0 \
  --set task.train_size=5000 --set task.heldout_size=50 --set actor.count=1 $SETS > "$OUT/run.log" 2>&1 \
  || { echo "run failed, last lines of $OUT/run.log:"; tail -20 "$OUT/run.log"; exit 1; }
RUN=$OUT/run "$PY" - <<'EOF'
import json, os
from pathlib import Path
rows = [json.loads(l) for l in (Path(os.environ["RUN"]) / "metrics.jsonl").read_text().splitlines() if l.strip()]
rows = [r for r in rows if "loss" in r]
steady = rows[2:] if len(rows) > 4 else rows
step_s = (steady[-1]["wall"] - steady[0]["wall"]) / max(1, len(steady) - 1)
fb = sum(r["time_forward_backward"] for r in steady) / len(steady)
tokens = sum(r["tokens"] for r in steady[1:])
print(f"{len(rows)} steps: {step_s:.2f} s/step (forward+backward {fb:.2f} s), "
      f"{tokens / max(1e-9, steady[-1]['wall'] - steady[0]['wall']):.0f} trained tokens/s, "
      f"{rows[-1]['samples_per_s']:.1f} samples/s, reward {rows[0]['reward_mean']:.3f} -> {rows[-1]['reward_mean']:.3f}")
EOF

phase "5. GPU smoke tests"
if [ "$DEVICE" = cuda ]; then
  timeout 240 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider
else
  echo "skipped on cpu"
fi
phase "done; files in $OUT"

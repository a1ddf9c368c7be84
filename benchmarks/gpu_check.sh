#!/usr/bin/env bash
# One-shot GPU check of docray's training data path (issue 15: Parquet -> Ray Data -> Ray Train).
#
# What it checks, each step under `timeout` (a failed step is logged as FAILED and the script goes on;
# all steps together stay within BUDGET_S seconds, the later ones get what is left):
#   compat   the model stack imports (docray.compat: torch, torchvision, timm, transformers, diffusers)
#   (a)      every trainer, tiny, as a Ray Data -> Ray Train run with use_gpu=true num_workers=1:
#            pretrain_recognition, train_recognition (text_encoder=hash, encoder_from=''), train_regen,
#            train_screening, train_privacy (registering only under the local DOCRAY_HOME)
#   (b)      python -m benchmarks.train_paths, short settings, one method per call (a time-out costs
#            one method): old (in-worker synth) vs new path, samples/s and GPU utilisation per worker
#   (c)      mixed precision: during (a) a probe in every Python process (a sitecustomize.py this
#            script writes, active only where AMP_PROBE_DIR is set) counts the forward outputs of
#            Linear/Conv layers computed with gradients, by device and dtype; the summary says per
#            trainer whether the GPU training forward ran in bf16 (autocast) or float32
# nvidia-smi samples GPU utilisation and memory every second meanwhile.
#
# The GPU machine has torch/numpy/pyarrow/timm/transformers but no Ray, pydantic, jsonschema, diffusers,
# sqlalchemy, faiss or the CJK font package: they travel as one archive, .gpu/site-packages.tar.xz
# (git-ignored, never committed: an extracted cp312 manylinux x86_64 site-packages of ray 2.60.0 less
# its Java jars, rllib, llm and the dashboard's source maps, pydantic, jsonschema, diffusers, sqlalchemy,
# faiss-cpu, noto-cjk-sans-otc and typing_extensions), unpacked to /tmp/site and put on PYTHONPATH ahead
# of the image's packages. docray itself is this working tree.
#
# The lead runs it with the device tool (one call, at most BUDGET_S + about a minute on the GPU):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=420)
# What comes back under $OUT: gpu_check.log (everything), amp_probe.json, gpu_util.csv,
# train_paths_<method>.json.
#
# Knobs (environment): PY (python3), USE_GPU (true), BUDGET_S (330), CAP_SCALE (1: multiplies each
# step's own time cap), CPUS_PER_WORKER (2; 0.5 on a 2-core host, where 2 starve Ray Data's tasks),
# STEPS (all of: compat mae unified regen descriptor mask paths amp), ARCHIVE (.gpu/site-packages.tar.xz;
# '' = use SITE as it is), SITE (/tmp/site), OUT (./gpu_check_out where unset). A dry run on a CPU host
# whose Python already has the archive's packages (as SITE, on PYTHONPATH):
#   USE_GPU=false ARCHIVE= SITE=DIR CAP_SCALE=6 BUDGET_S=3600 CPUS_PER_WORKER=0.5 bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
USE_GPU=${USE_GPU:-true}
BUDGET_S=${BUDGET_S:-330}
CAP_SCALE=${CAP_SCALE:-1}
CPUS=${CPUS_PER_WORKER:-2}
STEPS=${STEPS:-compat mae unified regen descriptor mask paths amp}
ARCHIVE=${ARCHIVE-.gpu/site-packages.tar.xz}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-$PWD/gpu_check_out}
RUNS=/tmp/gpu-check-runs
PROBE=/tmp/gpu-check-probe
rm -rf "$PROBE" && mkdir -p "$OUT" "$RUNS" "$PROBE"
LOG=$OUT/gpu_check.log
: >"$LOG"
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$LOG"; }
T0=$(date +%s)

if [ -n "$ARCHIVE" ]; then
  mkdir -p "$SITE" && tar -xJf "$ARCHIVE" -C "$SITE" || { log "FAILED to unpack $ARCHIVE"; exit 1; }
  log "unpacked $ARCHIVE into $SITE ($(du -sh "$SITE" | cut -f1)) in $(( $(date +%s) - T0 )) s"
fi

cat >"$PROBE/sitecustomize.py" <<'EOF'
# gpu_check's mixed-precision probe: inert unless AMP_PROBE_DIR is set. Counts the outputs of
# Linear/Conv layers run with gradients (training forward passes) by layer type, device and dtype,
# and rewrites AMP_PROBE_DIR/<pid>.json once a second while they change.
import os
import sys

_dir = os.environ.get("AMP_PROBE_DIR")
if _dir:
    import importlib.abc
    import importlib.machinery
    import json
    import threading
    import time

    _counts = {}

    def _dump():
        tmp = os.path.join(_dir, f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "argv": sys.argv[:2], "counts": _counts}, f)
        os.replace(tmp, os.path.join(_dir, f"{os.getpid()}.json"))

    def _writer():
        seen = None
        while True:
            time.sleep(1.0)
            now = dict(_counts)
            if now != seen:
                _dump()
                seen = now

    def _install(torch):
        kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)

        def hook(module, args, out):
            if isinstance(module, kinds) and torch.is_tensor(out) and out.requires_grad:
                key = f"{type(module).__name__}|{out.device.type}|{str(out.dtype).removeprefix('torch.')}"
                _counts[key] = _counts.get(key, 0) + 1

        torch.nn.modules.module.register_module_forward_hook(hook)
        os.makedirs(_dir, exist_ok=True)
        threading.Thread(target=_writer, daemon=True).start()

    class _AfterTorch(importlib.abc.MetaPathFinder):
        """Installs the hook right after `import torch` finishes (this process may never import it)."""

        def find_spec(self, name, path=None, target=None):
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module):
                    run(module)
                    _install(module)

                spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _AfterTorch())

# this file shadows any other sitecustomize.py (the image's own, say): run that one too
for _d in sys.path:
    _f = os.path.join(_d or ".", "sitecustomize.py")
    if os.path.abspath(_d or ".") != os.path.dirname(os.path.abspath(__file__)) and os.path.isfile(_f):
        exec(compile(open(_f).read(), _f, "exec"), {"__name__": "sitecustomize", "__file__": _f})
        break
EOF

export PYTHONPATH="$PROBE:$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DOCRAY_HOME=/tmp/docray-home
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
unset RAY_ADDRESS

GPU_SAMPLER=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee -a "$LOG"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$OUT/gpu_util.csv" 2>&1 &
  GPU_SAMPLER=$!
fi
timeout 90 $PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys
from docray.compat import patch_torchvision
patch_torchvision()  # a no-op where torchvision matches torch (a CUDA host)
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "torchvision", "ray", "pydantic", "transformers", "diffusers", "timm", "numpy", "pyarrow"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {m.__version__} ({m.__file__})")
    except Exception as e:
        print(f"{name}: IMPORT FAILED {type(e).__name__}: {e}")
import torch
print("cuda available:", torch.cuda.is_available(), "| cuda", torch.version.cuda,
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
      "| bf16 supported:", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF

# step NAME CAP_S CMD...: run CMD under timeout (CAP_S, or what is left of BUDGET_S), log its outcome.
step() {
  local name=$1 cap=$2 left t rc
  shift 2
  case " $STEPS " in *" ${name%%:*} "*) ;; *) return 0 ;; esac
  cap=$(( cap * CAP_SCALE ))
  left=$(( BUDGET_S - ($(date +%s) - T0) ))
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 20 ]; then log "SKIPPED $name: ${left}s of the ${BUDGET_S}s budget left"; return 0; fi
  log "START $name (timeout ${t}s): $*"
  local s=$(date +%s)
  timeout -k 10 "$t" "$@" 2>&1 | { grep --line-buffered -v -e "PYTHON worker processes have been started" \
    -e "Token authentication is enabled" || true; } | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then log "OK $name in $(( $(date +%s) - s ))s"
  else log "FAILED $name (rc=$rc$([ "$rc" -eq 124 ] && echo ', timed out')) after $(( $(date +%s) - s ))s"; fi
}

step compat 60 $PY -c "from docray.compat import main; main()"

# (a) every trainer, tiny, on the GPU. mae and unified share one synthetic documents set (same n_train,
# n_val, seed and options: made once). Each run's forward passes are counted by the probe (c).
W="use_gpu=$USE_GPU num_workers=1 cpus_per_worker=$CPUS"
step mae 100 env AMP_PROBE_DIR=$PROBE/mae $PY -m train_jobs.pretrain_recognition --set $W model=vit_mae_tiny n_train=64 n_val=16 \
  epochs=1 batch_size=16 register_as=gpu-check-encoder out=$RUNS/mae
step unified 100 env AMP_PROBE_DIR=$PROBE/unified $PY -m train_jobs.train_recognition --set $W model=unified_tiny text_encoder=hash \
  encoder_from= n_train=64 n_val=16 epochs=1 batch_size=16 register_as= out=$RUNS/unified
step regen 100 env AMP_PROBE_DIR=$PROBE/regen $PY -m train_jobs.train_regen --set $W model=regen_tiny n_train=16 n_val=8 \
  "original_size=[256,160]" max_epochs=1 batch_size=8 reader_steps=1 line_batch=8 to_registry=false out=$RUNS/regen
step descriptor 100 env AMP_PROBE_DIR=$PROBE/descriptor $PY -m train_jobs.train_screening --set $W model=descriptor_tiny \
  n_pictures=40 val_pictures=8 background_pictures=2 background_distractors=4 epochs=1 batch_size=64 \
  steps_per_epoch=8 to_registry=false out=$RUNS/descriptor
# (imported, not `-m`: as __main__ its train loop is pickled by value, which fails: "cannot pickle '_Classes'")
step mask 120 env AMP_PROBE_DIR=$PROBE/mask $PY -c "import sys; from train_jobs.train_privacy import main; main(sys.argv[1:])" \
  --set $W recognizer=recognizer_tiny \
  inpainter=inpaint_unet_tiny image_size=32 n_identities=8 samples=10 mask_bank=24 epochs=1 inpaint_epochs=1 \
  batch_size=16 run_name=gpu-check-mask out=$RUNS/mask

# (b) old vs new training path, one method per call, cheapest first.
if [ -f benchmarks/train_paths.py ]; then
  P="num_workers=1 cpus_per_worker=$CPUS use_gpu=$USE_GPU"
  for m in mask descriptor regen unified; do
    case $m in
      mask) cap=90 more="mask.kinds=[masked] mask.epochs=2" ;;
      descriptor) cap=90 more="descriptor.epochs=1" ;;
      regen) cap=90 more="regen.epochs=1" ;;
      unified) cap=120 more="unified.n_train=64 unified.n_val=16 unified.mae_epochs=1 unified.epochs=1" ;;
    esac
    step paths:$m $cap $PY -m benchmarks.train_paths --set "methods=[$m]" $P out=$RUNS/paths-$m $more
    [ -f $RUNS/paths-$m/result.json ] && cp $RUNS/paths-$m/result.json "$OUT/train_paths_$m.json"
  done
else
  log "SKIPPED paths: benchmarks/train_paths.py does not exist"
fi

# (c) mixed precision, from the probe's counts of (a): it needs no budget of its own.
BUDGET_S=$(( BUDGET_S + 60 ))
step amp 30 $PY - "$PROBE" "$OUT/amp_probe.json" <<'EOF'
import json, sys
from pathlib import Path

root, out = Path(sys.argv[1]), sys.argv[2]
report = {}
for name in ("mae", "unified", "regen", "descriptor", "mask"):
    files = sorted((root / name).glob("*.json"))
    counts = {}
    for f in files:
        for k, v in json.loads(f.read_text())["counts"].items():
            counts[k] = counts.get(k, 0) + v
    by = {}
    for k, v in counts.items():
        _, device, dtype = k.split("|")
        by[f"{device}|{dtype}"] = by.get(f"{device}|{dtype}", 0) + v
    gpu = {k: v for k, v in by.items() if k.startswith("cuda|")}
    bf16 = gpu.get("cuda|bfloat16", 0)
    total = sum(gpu.values())
    if not files:
        verdict = "NO PROBE DATA (the trainer did not run, or the probe did not load)"
    elif not total:
        verdict = "no training forward pass on the GPU"
    else:
        verdict = f"bf16 share of GPU training layer outputs: {bf16 / total:.0%}" + (
            "" if bf16 == total else f" ({total - bf16} not in bf16)")
    report[name] = {"processes_with_torch": len(files), "by_device_dtype": by, "by_layer": counts, "verdict": verdict}
    print(f"{name:11s} {verdict}   {by}")
Path(out).write_text(json.dumps(report, indent=2))
print("bf16 on the GPU in:", [n for n, r in report.items() if r["by_device_dtype"].get("cuda|bfloat16")])
EOF

[ -n "$GPU_SAMPLER" ] && kill "$GPU_SAMPLER" 2>/dev/null
log "done in $(( $(date +%s) - T0 ))s; summary:"
grep -E "^\[gpu_check [0-9:]+\] (OK|FAILED|SKIPPED)" "$LOG"

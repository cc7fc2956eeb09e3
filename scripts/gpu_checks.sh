#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (the device tool's machines, or any GPU box with this repo's deps):
#   bash scripts/gpu_checks.sh OUT_FOLDER
# 1. bench_step at the seed's sizes in bf16 (ours vs seed-style vs floor);
# 2. bench_step's long-sequence sweep on a ModernBERT-base-shaped teacher, 512 … 8,192 tokens, bf16, checkpointing;
# 3. the seed config (distil_clinical_bert.yaml, bf16: true) as shipped on a Bio_ClinicalBERT-shaped teacher;
# 4. the long-context config (long_context_modernbert.yaml) as shipped on a ModernBERT-base-shaped teacher.
# 5. (issue 24, not in the default PARTS: PARTS=throughput, about 8 minutes) bench_step in bf16 at the seed's
#    per-device batch (48) and at 128, 30 timed steps x 3 rounds, with torch_compile as a lever; the profile of one
#    step at 48; the seed config end to end, 200 steps with its data loader, with and without --torch_compile.
# Only paths and step counts are overridden. Each part writes its log (and JSON) into OUT_FOLDER.
# PARTS="seed long" (any of: sweep seed long bench throughput) runs only those.
set -u
out=${1:?usage: bash scripts/gpu_checks.sh OUT_FOLDER}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! $py -c "import hf_distil.model_card" 2>/dev/null; then  # not installed: the card template is package data
    site=$(mktemp -d)
    $py -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . && export PYTHONPATH="$site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
parts=" ${PARTS:-sweep seed long bench} "
want() { [[ $parts == *" $1 "* ]]; }
fixtures=$(mktemp -d)
$py scripts/gpu_fixtures.py "$fixtures" || exit 1

want sweep && timeout 230 $py benchmarks/bench_step.py --family modernbert --lengths 512,2048,8192 --batch_tokens 16384 \
    --gradient_checkpointing --bf16 --steps 3 --rounds 1 --json "$out/bench_step_long.json" \
    >"$out/bench_step_long.log" 2>&1; echo "bench_step long: rc $?"
want seed && timeout 110 $py recipes/run_distil.py recipes/configs/distil_clinical_bert.yaml \
    --teacher_model_name_or_path "$fixtures/seed/teacher" --train_file "$fixtures/seed/NOTEEVENTS.csv" \
    --output_dir "$fixtures/seed/out" --max_steps 20 --eval_steps 10 --save_steps 10 \
    >"$out/seed_config.log" 2>&1; echo "seed config: rc $?"
want long && timeout 110 $py recipes/run_distil.py recipes/configs/long_context_modernbert.yaml \
    --teacher_model_name_or_path "$fixtures/long/teacher" --train_file "$fixtures/long/notes.jsonl" \
    --output_dir "$fixtures/long/out" --max_steps 3 --eval_steps 3 --save_steps 3 \
    >"$out/long_config.log" 2>&1; echo "long config: rc $?"
want bench && timeout 100 $py benchmarks/bench_step.py --bf16 --steps 5 --rounds 1 --json "$out/bench_step_bf16.json" \
    >"$out/bench_step_bf16.log" 2>&1; echo "bench_step bf16: rc $?"
if want throughput; then
    timeout 170 $py benchmarks/bench_step.py --bf16 --batch 48 --warmup 3 --steps 30 --rounds 3 \
        --contenders ours,seed,floor,ours_compiled --json "$out/throughput_b48.json" >"$out/throughput_b48.log" 2>&1
    echo "throughput batch 48: rc $?"
    timeout 90 $py benchmarks/bench_step.py --bf16 --batch 128 --warmup 2 --steps 30 --rounds 3 \
        --contenders ours,seed,floor --skip_check --json "$out/throughput_b128.json" >"$out/throughput_b128.log" 2>&1
    echo "throughput batch 128: rc $?"
    timeout 45 $py benchmarks/bench_step.py --bf16 --batch 48 --warmup 2 --steps 3 --rounds 1 --profile \
        --contenders ours --skip_check >"$out/throughput_profile_b48.log" 2>&1; echo "profile batch 48: rc $?"
    for compiled in false true; do
        timeout 80 $py recipes/run_distil.py recipes/configs/distil_clinical_bert.yaml \
            --teacher_model_name_or_path "$fixtures/seed/teacher" --train_file "$fixtures/seed/NOTEEVENTS.csv" \
            --output_dir "$fixtures/seed/e2e_compile_$compiled" --max_steps 200 --eval_steps 200 --save_steps 200 \
            --torch_compile $compiled >"$out/e2e_compile_$compiled.log" 2>&1; echo "seed config 200 steps, compile $compiled: rc $?"
        grep -h "train_samples_per_second" "$out/e2e_compile_$compiled.log" | tail -1
    done
    grep -h "^ours\|^seed \|^floor\|seed's three epochs" "$out"/throughput_b*.log
fi
for f in "$fixtures/seed/out/README.md" "$fixtures/long/out/README.md"; do
    [ -f "$f" ] && cp "$f" "$out/$(basename "$(dirname "$(dirname "$f")")")_card.md"
done
grep -h "train_runtime\|train_samples_per_second\|'eval_loss'" "$out"/*config.log | tail -4

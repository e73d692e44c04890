#!/usr/bin/env bash
# make demo-segments: segment-level OOD (MetaSeg meta models, then retrieval of the OOD segments) on generated
# scenes, offline, in a few minutes on a CPU. Every step is a command you can copy; for Cityscapes-like data,
# swap the data root, the lists, the segmentation model and checkpoint and the embedding backbone (README).
set -euo pipefail
cd "$(dirname "$0")/.."
# The models are small: one thread per process is as fast here and does not stall when other processes share
# the cores (several threads spin-wait for each other then).
export OMP_NUM_THREADS=1

OUT=runs/demo_segments                            # everything the demo writes, except the weights
DATA=$OUT/data                                    # scenes, masks, lists, backbone crops
SEG=lraspp_mobilenet_v3_large                     # any segment_images.py model
SEG_CKPT=checkpoints/demo_segments_$SEG.pt
EMB_CKPT=checkpoints/demo_segments_resnet18.safetensors
STORE=$OUT/store.h5                               # segment_images.py's store: score maps, segment table, E/D/V
EMB=$OUT/embeddings.h5                            # the embeddings of the poorly predicted segments
start=$SECONDS
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }

step "1/8 scenes: digits 0-4 (ID) and 5-9 (OOD) on photograph textures, 64x64; backbone crops of all ten digits"
python -m ood.segments.demo scenes "$DATA"

step "2/8 train the segmentation model ($SEG, random init, 6 classes: background + digits 0-4)"
python -m ood.segments.demo train "$DATA" "$SEG_CKPT" --min_miou 0.4

step "3/8 train the embedding backbone (timm resnet18 on the backbone crops: the part ImageNet plays in the paper)"
python -m ood.demo train --data_root "$DATA" --train_list "$DATA/backbone_train.txt" \
    --test_list "$DATA/backbone_test.txt" --out "$EMB_CKPT" --epochs 10 --min_accuracy 0.8

step "4/8 segment the test scenes: pixel scores, predicted classes, segment table with MetaSeg metrics"
python segment_images.py "$DATA" "$STORE" "$SEG" --checkpoint "$SEG_CKPT" --num_classes 6 \
    --img_list "$DATA/test.txt" --list_format imagenet_s --batch 16 --workers 0 --device cpu --overwrite --quiet

step "5/8 pixel-level OOD detection (ids 6-10, the digits 5-9, are OOD)"
python evaluate_segmentation.py ood "$STORE" --ood_ids 6,7,8,9,10 --min_pred_size 20 --min_gt_size 20 --quiet

step "6/8 meta classification and regression of the segments' IoU; the predicted IoU goes into the store"
python -m ood.segments meta "$STORE" --json "$OUT/meta.json" --model_out "$OUT/meta_model.skops" --quiet

step "7/8 embed the crops of the segments predicted as poor (IoU < 0.5, at least 40 pixels)"
python -m ood.segments embed "$STORE" "$EMB" resnet18 --checkpoint "$EMB_CKPT" --num_classes 10 --resize 32 \
    --min_crop 24 --where "iou_pred<0.5" --where "S>=40" --workers 0 --device cpu --overwrite --quiet

step "8/8 retrieval mAP and clustering of the embedded segments; the 2-D map and a gallery"
python -m ood.segments retrieve "$EMB" --store "$STORE" --class_names "$DATA/classes.txt" \
    --json "$OUT/retrieval.json" --map "$OUT/map.png" --gallery "$OUT/gallery.png" \
    --gallery_classes 6,7,8,9,10 --quiet > "$OUT/retrieval.txt"
cat "$OUT/retrieval.txt"
echo
python -m ood.segments.demo report "$OUT/retrieval.json" --min_ratio 1.5

step "done. Tables: $OUT/retrieval.txt, $OUT/meta.json, $OUT/retrieval.json; pictures: $OUT/map.png," \
     "$OUT/gallery.png; store: $STORE; checkpoints: $SEG_CKPT, $EMB_CKPT"

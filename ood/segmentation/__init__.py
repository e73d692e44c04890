"""Segmentation: ImageNet-S evaluation, per-pixel OOD score maps and the SegmentMeIfYouCan metrics."""

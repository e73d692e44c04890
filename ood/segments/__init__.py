"""Segment-level OOD in semantic segmentation: MetaSeg's segment metrics and meta models (Rottmann et al. 2018),
then embeddings, retrieval and clustering of the poorly predicted segments (Oberdiek, Rottmann & Fink, CVPR-W
2020). The table of segments lives in the segmentation store (:mod:`ood.segments.table`)."""

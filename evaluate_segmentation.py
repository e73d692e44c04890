#!/usr/bin/env python
"""Segmentation evaluation (ImageNet-S, pixel-level OOD): see ``python evaluate_segmentation.py --help``."""
import sys

from ood.segmentation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

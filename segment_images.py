#!/usr/bin/env python
"""Per-pixel OOD score maps of a segmentation model into one HDF5 file: see ``python segment_images.py --help``."""
import sys

from ood.segmentation.runner import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Extract penultimate features, logits and labels to an HDF5 feature file: see ``python extract_features.py --help``."""
import sys

from ood.extract import main

if __name__ == "__main__":
    sys.exit(main())

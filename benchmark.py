#!/usr/bin/env python
"""Benchmark post-hoc OOD detectors on stored features: see ``python benchmark.py --help``."""
import sys

from ood.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

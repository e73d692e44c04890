#!/usr/bin/env bash
# The demo arrives with issue 4 (digits + photographs, a small timm model, extraction, benchmark).
echo "make demo: will prepare real images (sklearn digits and photographs), train a small timm model,"
echo "extract features with extract_features.py and print the detector table with benchmark.py."
echo "Not built yet."

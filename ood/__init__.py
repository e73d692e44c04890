"""ood: feature extraction to HDF5 and fast, exact post-hoc OOD detector benchmarks."""
__version__ = "0.1.0"

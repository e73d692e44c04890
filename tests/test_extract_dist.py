"""torchrun sharding on CPU (gloo, 2 processes): the merged file equals a single-process run, in list order."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .test_extract import corrupt, make_images, read_all, run_cli, save_timm_checkpoint

REPO = Path(__file__).resolve().parents[1]


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "extract_features.py"), *map(str, args), "--device", "cpu", "--quiet"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_merge_in_order(tmp_path):
    root = tmp_path / "imgs"
    paths = make_images(root, n=11)
    corrupt(root / paths[8])  # in rank 1's shard
    _, ckpt = save_timm_checkpoint(tmp_path)
    lst = tmp_path / "list.txt"
    order = paths[::-1]  # not sorted, so the merge order is checked against the list
    lst.write_text("".join(f"{p} {i}\n" for i, p in enumerate(order)))
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0, "--batch", 2, "--img_list", lst,
              "--skip_bad"]
    done = torchrun(root, tmp_path / "dist.h5", *common)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_cli(root, tmp_path / "one.h5", *common) == 0
    dist, dist_attrs = read_all(tmp_path / "dist.h5")
    one, _ = read_all(tmp_path / "one.h5")
    kept = [p for p in order if p != paths[8]]
    assert [p.decode() for p in dist["paths"]] == kept
    np.testing.assert_array_equal(dist["labels"], [order.index(p) for p in kept])
    np.testing.assert_allclose(dist["features"], one["features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dist["logits"], one["logits"], rtol=1e-4, atol=1e-5)
    assert [p.decode() for p in dist["skipped_paths"]] == [paths[8]] and dist_attrs["num_skipped"] == 1
    assert dist_attrs["complete"] and dist_attrs["model"] == "test_resnet"
    assert sorted(q.name for q in tmp_path.iterdir() if q.name.startswith("dist")) == ["dist.h5"]  # shards gone


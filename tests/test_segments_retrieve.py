"""python -m ood.segments retrieve: AP, k-NN and mAP tables against brute-force loops written here, clustering
scores against scikit-learn and a hand count, the command end to end with pictures, bad input."""
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ood.errors import InputError, ParameterError
from ood.features import FeatureWriter
from ood.segments import retrieve as rt
from ood.segments.__main__ import main as segments_main
from ood.segments.embed import GROUP, KIND


def blobs(n=90, d=12, classes=4, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


def brute_distances(x, q, metric):
    x = x.astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(((x - x[q]) ** 2).sum(1))
    return 1 - x @ x[q] / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[q]))


def brute_ap(x, labels, q, metric, k=None):
    """Rank every other row by a float64 distance, walk the list, sum precision at each relevant rank."""
    d = brute_distances(x, q, metric)
    order = [i for i in np.argsort(d, kind="stable") if i != q]
    relevant = sum(1 for i in order if labels[i] == labels[q])
    if relevant == 0:
        return np.nan
    k = len(order) if k is None else k
    hits, total = 0, 0.0
    for rank, i in enumerate(order[:k], start=1):
        if labels[i] == labels[q]:
            hits += 1
            total += hits / rank
    return total / min(relevant, k)


@pytest.mark.parametrize("metric", rt.METRICS)
@pytest.mark.parametrize("k", [None, 7])
@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_average_precision_matches_a_loop_over_queries(metric, k, backend):
    x, labels = blobs()
    queries = np.array([0, 3, 5, 17, 40, 89])
    ap = rt.average_precisions(x, labels, metric=metric, k=k, queries=queries, backend=backend, block_mb=0.001)
    want = [brute_ap(x, labels, q, metric, k) for q in queries]
    np.testing.assert_allclose(ap, want, rtol=1e-6)
    full = rt.average_precisions(x, labels, metric=metric, k=k, backend=backend)
    np.testing.assert_allclose(full[queries], want, rtol=1e-6)
    assert 0.3 < np.nanmean(full) < 1  # the blobs are retrievable, the test is not trivial
    both = rt.average_precisions_by_metric(x, labels, k=k, queries=queries, backend=backend)
    np.testing.assert_allclose(both[metric], want, rtol=1e-6)


def test_ap_ties_count_against_the_query_and_lonely_queries_are_nan():
    x = np.array([[0.0], [1.0], [-1.0], [5.0]], np.float32)  # rows 1 and 2 equally far from row 0
    labels = np.array([0, 0, 1, 2])
    ap = rt.average_precisions(x, labels)
    assert ap[0] == pytest.approx(0.5)  # the relevant row 1 ranks second behind the equally far row 2
    assert np.isnan(ap[2]) and np.isnan(ap[3])


@pytest.mark.parametrize("metric", rt.METRICS)
@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_knn_matches_brute_force(metric, backend):
    x, _ = blobs(n=60, d=9)
    queries = np.array([1, 2, 30, 59])
    dist, idx = rt.knn(x, 5, metric=metric, queries=queries, backend=backend, block_mb=0.001)
    for row, q in enumerate(queries):
        d = brute_distances(x, q, metric)
        d[q] = np.inf
        want = np.argsort(d, kind="stable")[:5]
        assert idx[row].tolist() == want.tolist()
        np.testing.assert_allclose(dist[row], d[want], rtol=1e-4, atol=1e-5)


def test_k_larger_than_the_segments_is_one_line():
    x, labels = blobs(n=10)
    with pytest.raises(InputError, match="--k 10 is larger than the 9 other segments"):
        rt.average_precisions(x, labels, k=10)
    with pytest.raises(InputError, match="larger than"):
        rt.knn(x, 12)
    with pytest.raises(ParameterError, match="at least 1"):
        rt.knn(x, 0)


def test_map_by_class_against_direct_means():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    ap = np.array([1.0, 0.5, 0.0, 0.25, 0.75, np.nan, 0.2, 0.4, 0.6, 0.8])
    table = rt.map_by_class(ap, labels, labels, {0: "zero"})
    by = {r["class"]: r for r in table["classes"]}
    assert sorted(by) == [0, 1, 3]  # class 2 has one segment: no query
    assert by[0]["name"] == "zero" and by[1]["name"] == "1"
    assert by[0]["map"] == pytest.approx(0.5) and by[3]["map"] == pytest.approx(0.5)
    assert by[3]["chance"] == pytest.approx(3 / 9) and by[1]["queries"] == 2
    assert table["mean"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert table["weighted"] == pytest.approx(np.nanmean(ap))
    assert table["chance_weighted"] == pytest.approx((3 * 2 / 9 + 2 * 1 / 9 + 4 * 3 / 9) / 9)


def test_purity_by_hand_and_scores_against_sklearn():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([5, 5, 1, 1, 1, 1, 7, 7])
    # clusters: 5 -> {0, 0} (2), 1 -> {0, 1, 1, 2} (2 of class 1), 7 -> {2, 2} (2): 6 of 8
    assert rt.purity(true, pred) == pytest.approx(6 / 8)
    s = rt.cluster_scores(true, pred)
    assert s["ari"] == pytest.approx(adjusted_rand_score(true, pred))
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred))
    assert s["purity"] == pytest.approx(0.75)


@pytest.mark.parametrize("method", rt.CLUSTER_METHODS)
def test_clustering_separated_blobs(method):
    x, labels = blobs(n=80, classes=3, spread=0.2, seed=3)
    pred = rt.cluster(x, 3, method, seed=0)
    assert rt.cluster_scores(labels, pred)["ari"] == pytest.approx(1.0)
    with pytest.raises(ParameterError, match="--clusters"):
        rt.cluster(x[:2], 3, method)


@pytest.mark.parametrize("method", ["sklearn", "opentsne"])
def test_tsne_is_seeded_and_keeps_the_blobs_apart(method):
    if method == "opentsne":
        pytest.importorskip("openTSNE")
    x, labels = blobs(n=60, d=60, classes=3, spread=0.3, seed=2)
    a, b = rt.tsne_2d(x, seed=1, method=method), rt.tsne_2d(x, seed=1, method=method)
    assert a.shape == (60, 2) and np.array_equal(a, b)
    assert np.nanmean(rt.average_precisions(a, labels)) > 0.95


def test_sample():
    assert rt.sample(10, 20, 0).tolist() == list(range(10))
    s = rt.sample(100, 7, 0)
    assert len(s) == 7 and np.all(np.diff(s) > 0)


def write_embedding_file(tmp_path, n=48, classes=3, seed=0, unknown=3):
    """A small embedding file as python -m ood.segments embed writes it, over generated images."""
    rng = np.random.default_rng(seed)
    x, labels = blobs(n=n, d=16, classes=classes, seed=seed)
    labels[:unknown] = -1
    root = tmp_path / "images"
    root.mkdir()
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"{i}.png")
        paths.append(f"{i}.png")
    image = np.arange(n) % 6
    box = np.tile([5, 6, 30, 40], (n, 1)).astype(np.int32)
    out = tmp_path / "emb.h5"
    w = FeatureWriter(out, n, x.shape[1], attrs={"kind": KIND, "data_root": str(root), "table_sha256": "x"})
    keys = {"row": np.arange(n), "image": image, "segment": np.ones(n, np.int32), "pred_class": (labels + 1) % 3,
            "gt_class": labels, "iou": np.zeros(n, np.float32), "iou_pred": np.zeros(n, np.float32),
            "bbox": box, "box": box}
    for name, values in keys.items():
        w.h5.create_dataset(f"{GROUP}/{name}", data=values)
    w.append(x, None, labels, [paths[i] for i in image])
    w.close()
    return out, x, labels


def test_command_tables_json_and_pictures(tmp_path, capsys):
    emb, x, labels = write_embedding_file(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    rc = segments_main(["retrieve", str(emb), "--json", str(tmp_path / "r.json"), "--class_names", str(names),
                        "--map", str(tmp_path / "map.png"), "--gallery", str(tmp_path / "g.png"), "--gallery_k", "3",
                        "--color", "pred", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cat" in out and "embedding/euclidean mAP %" in out and "2-D/euclidean mAP %" in out
    assert "kmeans" in out and "spectral" in out and "3 of 48 segments have no ground-truth class" in out
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text
    report = json.loads(text)
    has = labels >= 0
    want = np.nanmean([brute_ap(x[has], labels[has], q, "cosine") for q in range(has.sum())])
    assert report["retrieval"]["embedding/cosine"]["weighted"] == pytest.approx(want, rel=1e-6)
    assert {r["method"] for r in report["clustering"]} == set(rt.CLUSTER_METHODS)
    for png in ("map.png", "g.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size[0] > 300 and im.size[1] > 300


def test_command_bad_input(tmp_path, capsys):
    emb, _, _ = write_embedding_file(tmp_path)
    assert segments_main(["retrieve", str(emb), "--k", "100", "--no_2d", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--k 100 is larger than the 44 other segments" in err
    plain = tmp_path / "plain.h5"
    FeatureWriter(plain, 1, 2).close()
    assert segments_main(["retrieve", str(plain), "--quiet"]) == 2
    assert "not a segment embedding file" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()

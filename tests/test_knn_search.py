"""Approximate kNN: IVF with every list probed equals exact search, with fewer lists it finds the top k of the
rows in the probed lists; HNSW (faiss) recalls nearly all."""
import numpy as np
import pytest

import ood
from ood.detectors import knn as knn_module

faiss = pytest.importorskip("faiss")


def slow_knn_scores(train, queries, k):
    bank = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cos = np.sort(q @ bank.T, axis=1)[:, ::-1][:, k - 1]
    return -np.sqrt(np.maximum(2 - 2 * cos, 0))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32)) * 3
    train = (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 32))).astype(np.float32)
    queries = (centers[rng.integers(0, 20, 300)] + rng.normal(size=(300, 32))).astype(np.float32)
    return train, queries


def test_ivf_probing_every_list_is_exact(data):
    train, queries = data
    det = ood.create("knn", k=10, search="ivf", nlist=16, nprobe=16).fit(train)
    np.testing.assert_allclose(det.score(queries), slow_knn_scores(train, queries, 10), atol=2e-5)


def test_ivf_finds_the_top_k_of_the_probed_lists():
    rng = np.random.default_rng(1)  # no clusters: many true neighbours lie outside the probed lists
    train, queries = rng.normal(size=(2000, 16)).astype(np.float32), rng.normal(size=(200, 16)).astype(np.float32)
    det = ood.create("knn", k=10, search="ivf", nlist=16, nprobe=3).fit(train)
    got = det.score(queries)
    centroids = det.bank_.index(10).centroids.numpy().astype(np.float64)
    bank = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    lists = np.argmax(bank @ centroids.T, axis=1)
    expected = []
    for row in q:
        probed = np.argsort(-(row @ centroids.T))[:3]
        cos = np.sort(bank[np.isin(lists, probed)] @ row)[::-1][9]
        expected.append(-np.sqrt(max(2 - 2 * cos, 0)))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.mean(np.abs(got - slow_knn_scores(train, queries, 10)) > 1e-4) > 0.1  # some are missed


def test_hnsw_and_default_ivf_close_to_exact(data):
    train, queries = data
    exact = slow_knn_scores(train, queries, 10)
    for params in ({"search": "hnsw"}, {"search": "ivf"}):
        got = ood.create("knn", k=10, **params).fit(train).score(queries)
        assert np.mean(np.abs(got - exact) < 1e-4) > 0.9, params


def test_rows_with_too_few_neighbours_are_searched_exactly(data):
    train, queries = data
    det = ood.create("knn", k=200, search="ivf", nlist=64, nprobe=1).fit(train)  # one list holds < 200 rows
    np.testing.assert_allclose(det.score(queries), slow_knn_scores(train, queries, 200), atol=2e-5)


def test_without_faiss_exact_search_with_a_note(data, monkeypatch):
    train, queries = data
    monkeypatch.setattr(knn_module, "faiss", None)
    det = ood.create("knn", k=5, search="hnsw").fit(train)
    np.testing.assert_allclose(det.score(queries), slow_knn_scores(train, queries, 5), atol=2e-5)
    assert any("faiss is not installed" in n for n in det.notes_)


def test_unknown_search_refused():
    with pytest.raises(ood.ParameterError, match="knn.search must be one of exact, ivf, hnsw"):
        ood.create("knn", search="lsh")

"""python -m ood.sood build (the SOOD data engine) on features whose CLIP similarity to each superclass is set
by construction, against a direct computation of scores, fences, cut points and splits written here."""
import csv
import json

import numpy as np
import pytest

from ood.benchmark import main as benchmark_main
from ood.data import read_list
from ood.features import FeatureFile, read_head, write_fc, write_features
from ood.sood import main as sood_main

SCALE = 50.0
D = 16
CLASSES = ["tool", "sea_animal", "bird"]  # class ids in this order (the --superclasses file)
# (subclass, images, mean cosine) per superclass: means spread so each band gets subclasses
SUBCLASSES = {
    "tool": [("hammer", 12, 0.50), ("saw", 8, 0.42), ("drill", 20, 0.30), ("chisel", 6, 0.22), ("awl", 10, 0.15),
             ("rasp", 7, 0.35)],
    "sea_animal": [("seal", 15, 0.45), ("crab", 9, 0.40), ("eel", 11, 0.25), ("squid", 5, 0.10),
                   ("krill", 6, 0.33)],
    "bird": [("robin", 10, 0.55), ("wren", 14, 0.47), ("kiwi", 8, 0.20), ("emu", 9, 0.28), ("auk", 4, 0.38),
             ("tern", 13, 0.12), ("rail", 6, 0.43)],
}


def unit_with_cosine(t, c, rng):
    """A unit vector whose cosine with the unit vector t is exactly c (to float rounding)."""
    u = rng.normal(size=t.size)
    u -= (u @ t) * t
    return c * t + np.sqrt(1 - c * c) * u / np.linalg.norm(u)


@pytest.fixture
def engine(tmp_path):
    """Features, fc head, SOOD list and superclass file; the list is in another order than the feature rows and
    the feature file has rows no list names."""
    rng = np.random.default_rng(0)
    text = np.linalg.qr(rng.normal(size=(D, D)))[0][:len(CLASSES)]  # orthonormal superclass embeddings
    entries, feats = [], []
    for k, sup in enumerate(CLASSES):
        for sub, n, mu in SUBCLASSES[sup]:
            cos = np.clip(mu + 0.03 * rng.normal(size=n), -0.9, 0.9)
            if n >= 10:
                cos[0] = mu - 0.4  # far below its subclass: an outlier for the fences
            for i in range(n):
                entries.append((f"{sup}/{sub}/img {i}.jpg", k, sup, sub))
                feats.append(unit_with_cosine(text[k], cos[i], rng))
    extra = [rng.normal(size=D) for _ in range(5)]
    x = np.array(feats + extra, dtype=np.float32)
    paths = [e[0] for e in entries] + [f"other/{i}.jpg" for i in range(5)]
    perm = rng.permutation(len(paths))  # feature rows in another order than the list
    write_features(tmp_path / "cand.h5", x[perm], paths=[paths[i] for i in perm], backend="open_clip",
                   model="toy-clip")
    write_fc(tmp_path / "fc_text.h5", SCALE * text, np.zeros(len(CLASSES)),
             [c.replace("_", " ") for c in CLASSES], backend="open_clip", model="toy-clip", logit_scale=SCALE)
    shuffled = [entries[i] for i in rng.permutation(len(entries))]
    (tmp_path / "cand.txt").write_text("".join(f"{p} {k} {s} {b}\n" for p, k, s, b in shuffled))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    W = read_head(tmp_path / "fc_text.h5").weight.astype(np.float64)
    return tmp_path, entries, dict(zip(paths, x.astype(np.float64))), W


def direct(entries, vectors, W, p_low=20, p_high=40, fence=1.5, cut_by="images"):
    """The engine one image, one subclass, one superclass at a time; W: the stored text head (logit scale in)."""
    logit = {}
    for p, k, _, _ in entries:
        f = vectors[p]
        logit[p] = float(f @ W[k]) / float(np.sqrt(f @ f))
    score, outliers, bands, cuts = {}, set(), {}, {}
    for k, sup in enumerate(CLASSES):
        mine = [e for e in entries if e[1] == k]
        lo, hi = min(logit[e[0]] for e in mine), max(logit[e[0]] for e in mine)
        for e in mine:
            score[e[0]] = (logit[e[0]] - lo) / (hi - lo)
        means, kept = {}, {}
        for sub, _, _ in SUBCLASSES[sup]:
            s = np.array([score[e[0]] for e in mine if e[3] == sub])
            q1, q3 = np.percentile(s, [25, 75])
            out = [e[0] for e in mine if e[3] == sub and not q1 - fence * (q3 - q1) <= score[e[0]] <= q3 + fence * (q3 - q1)]
            outliers.update(out)
            keep = [score[e[0]] for e in mine if e[3] == sub and e[0] not in out]
            means[sub], kept[sub] = float(np.mean(keep)), len(keep)
        pool = [means[b] for b in means for _ in range(kept[b] if cut_by == "images" else 1)]
        c_low, c_high = np.percentile(pool, [p_low, p_high])
        cuts[sup] = (c_low, c_high)
        for sub, m in means.items():
            bands[sup, sub] = "iid" if m >= c_high else "hard" if m < c_low else "easy"
    return logit, score, outliers, bands, cuts


def build(d, *extra):
    return sood_main(["build", str(d / "cand.h5"), str(d / "out"), "--list", str(d / "cand.txt"), "--superclasses",
                      str(d / "classes.txt"), "--head", str(d / "fc_text.h5"), "--quiet", *extra])


def read_lists(out):
    return {s: [line.rsplit(maxsplit=3) for line in (out / f"{s}.txt").read_text().splitlines()]
            for s in ("train_iid", "test_iid", "test_easy_ood", "test_hard_ood")}


def test_build_matches_direct_computation(engine, capsys):
    d, entries, vectors, W = engine
    assert build(d) == 0
    printed = capsys.readouterr().out
    out = d / "out"
    logit, score, outliers, bands, cuts = direct(entries, vectors, W)
    assert 0 < len(outliers) < 12  # the planted ones, and every band is used below
    lists = read_lists(out)
    where = {p: s for s, rows in lists.items() for p, *_ in rows}
    by_path = {e[0]: e for e in entries}
    for p, k, sup, sub in entries:
        want = "outlier" if p in outliers else {"iid": "iid", "easy": "test_easy_ood", "hard": "test_hard_ood"}[
            bands[sup, sub]]
        got = where.get(p, "outlier")
        assert (got in ("train_iid", "test_iid") if want == "iid" else got == want), (p, want, got)
    for rows in lists.values():  # class id, superclass, subclass as the list said
        for p, cid, sup, sub in rows:
            assert (int(cid), sup, sub) == by_path[p][1:]
    assert {b for b in bands.values()} == {"iid", "easy", "hard"}

    rows = list(csv.DictReader(open(out / "outliers.csv")))
    assert {r["path"] for r in rows} == outliers
    for r in rows:
        assert float(r["score"]) == pytest.approx(score[r["path"]], abs=1e-6)
        assert float(r["logit"]) == pytest.approx(logit[r["path"]], rel=1e-5)
    rec = json.loads((out / "sood_build.json").read_text())
    for c in rec["superclasses"]:
        assert (c["cut_low"], c["cut_high"]) == pytest.approx(cuts[c["superclass"]], abs=1e-12)
        assert c["logit_min"] == pytest.approx(min(logit[e[0]] for e in entries if e[2] == c["superclass"]))
    assert rec["options"] == {"p_high": 40.0, "p_low": 20.0, "fence": 1.5, "cut_by": "images", "iid_test": 0.1,
                              "seed": 0}
    subs = {(r["superclass"], r["subclass"]): r for r in csv.DictReader(open(out / "subclasses.csv"))}
    for (sup, sub), band in bands.items():
        kept = [score[e[0]] for e in entries if e[2] == sup and e[3] == sub and e[0] not in outliers]
        assert subs[sup, sub]["band"] == band and float(subs[sup, sub]["mean_score"]) == pytest.approx(np.mean(kept),
                                                                                                      abs=1e-6)
        iid_test = int(subs[sup, sub]["test_iid"])
        assert iid_test == (round(0.1 * len(kept)) if band == "iid" else 0)

    # the lists follow the feature file's row order; rows not in the list are named in a note
    with FeatureFile(d / "cand.h5") as f:
        order = {p: i for i, p in enumerate(f.paths())}
    for rows in lists.values():
        assert [order[r[0]] for r in rows] == sorted(order[r[0]] for r in rows)
    assert "5 rows of" in printed and "left out" in printed
    assert printed.splitlines()[2].split()[:2] == ["Superclass", "Id"]
    all_row = next(line for line in printed.splitlines() if line.startswith("all "))
    assert all_row.split()[4:8] == [str(len(lists[s])) for s in lists]
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cut_by_subclasses_and_options(engine, capsys):
    d, entries, vectors, W = engine
    assert build(d, "--cut_by", "subclasses", "--p_high", "60", "--p_low", "30", "--fence", "3") == 0
    _, _, outliers, bands, _ = direct(entries, vectors, W, 30, 60, 3.0, "subclasses")
    got = {(r["superclass"], r["subclass"]): r["band"] for r in csv.DictReader(open(d / "out" / "subclasses.csv"))}
    assert got == bands
    assert {r["path"] for r in csv.DictReader(open(d / "out" / "outliers.csv"))} == outliers
    rec = json.loads((d / "out" / "sood_build.json").read_text())
    assert rec["options"]["cut_by"] == "subclasses" and rec["options"]["p_high"] == 60
    capsys.readouterr()


def test_deterministic_for_a_seed(engine, capsys):
    d, *_ = engine
    assert build(d) == 0
    first = {s: (d / "out" / f"{s}.txt").read_bytes() for s in ("train_iid", "test_iid", "test_hard_ood")}
    assert build(d, "--overwrite") == 0
    assert first == {s: (d / "out" / f"{s}.txt").read_bytes() for s in first}
    assert build(d, "--overwrite", "--seed", "5") == 0
    assert (d / "out" / "test_iid.txt").read_bytes() != first["test_iid"]
    assert (d / "out" / "test_hard_ood.txt").read_bytes() == first["test_hard_ood"]
    assert build(d) == 2  # without --overwrite the outputs stay
    assert "exists already" in capsys.readouterr().err


def test_lists_round_trip_through_the_readers_and_the_protocol(engine, tmp_path, capsys):
    d, entries, *_ = engine
    assert build(d, "--features_out") == 0
    out = d / "out"
    for s in ("train_iid", "test_iid", "test_easy_ood", "test_hard_ood"):
        data = read_list(out / f"{s}.txt")
        assert data.format == "sood" and data.classes == CLASSES
        with FeatureFile(out / f"{s}.h5") as f:
            assert list(f.paths()) == data.paths and f.labels().tolist() == data.labels.tolist()
            assert list(f.read("subclass")) == data.extra["subclass"] and f.attrs["model"] == "toy-clip"
    capsys.readouterr()
    assert benchmark_main([str(out / "fc.h5"), *(str(out / f"{s}.h5") for s in ("train_iid", "test_iid",
                           "test_easy_ood", "test_hard_ood")), "--protocol", "sood", "--methods", "msp,mcm",
                           "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    n = {r["split"]: r["n"] for r in res["accuracy"] if r["superclass"] == "all"}
    assert n == {s: len(read_list(out / f"{s}.txt")) for s in n} and len(n) == 4
    assert {r["dataset"] for r in res["detection"]} == {"test_easy_ood", "test_hard_ood"}


def test_hierarchy_from_the_feature_file_and_a_csv(engine, capsys):
    """Without --list the feature file's own superclass/subclass columns serve; a CSV list gives the same."""
    d, entries, vectors, _ = engine
    paths = [e[0] for e in entries]
    write_features(d / "cols.h5", np.array([vectors[p] for p in paths], np.float32), paths=paths,
                   labels=[e[1] for e in entries], backend="open_clip", model="toy-clip",
                   extra={"superclass": [e[2] for e in entries], "subclass": [e[3] for e in entries]})
    assert sood_main(["build", str(d / "cols.h5"), str(d / "a"), "--head", str(d / "fc_text.h5"), "--quiet"]) == 0
    with open(d / "cand.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subclass", "path", "superclass"])
        w.writerows([[e[3], e[0], e[2].replace("_", " ")] for e in entries])  # spaces become '_'
    assert sood_main(["build", str(d / "cols.h5"), str(d / "b"), "--list", str(d / "cand.csv"), "--superclasses",
                      str(d / "classes.txt"), "--head", str(d / "fc_text.h5"), "--quiet"]) == 0
    for s in ("train_iid", "test_iid", "test_easy_ood", "test_hard_ood"):  # class ids 0..2 in the list's order
        assert (d / "a" / f"{s}.txt").read_text() == (d / "b" / f"{s}.txt").read_text()
    assert "had spaces" in capsys.readouterr().out


def _one_line_error(capsys, *names):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, err
    return err


def test_bad_input_is_one_line(engine, capsys):
    d, entries, vectors, W = engine
    lines = (d / "cand.txt").read_text().splitlines()

    def variant(name, keep):
        (d / name).write_text("\n".join(line for line in lines if keep(line)) + "\n")
        return sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--list", str(d / name), "--head",
                          str(d / "fc_text.h5"), "--quiet"])

    auk = [line for line in lines if "/auk/" in line]
    assert variant("small.txt", lambda line: line != auk[0]) == 2  # auk: 3 images
    _one_line_error(capsys, "small.txt", "'auk'", "3 images", "at least 4")
    sea = ("/eel/", "/squid/", "/krill/")
    assert variant("few.txt", lambda line: not any(s in line for s in sea)) == 2
    _one_line_error(capsys, "few.txt", "'sea_animal'", "2 subclasses", "at least 3")
    (d / "missing.txt").write_text("\n".join(lines + ["tool/hammer/new.jpg 0 tool hammer"]) + "\n")
    assert sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--list", str(d / "missing.txt"), "--head",
                      str(d / "fc_text.h5"), "--quiet"]) == 2
    _one_line_error(capsys, "cand.h5", "1 of the", "'tool/hammer/new.jpg'")

    with FeatureFile(d / "cand.h5") as f:
        x, paths = f.read(), list(f.paths())
    write_features(d / "timm.h5", x, paths=paths, backend="timm", model="resnet50")
    assert sood_main(["build", str(d / "timm.h5"), str(d / "o"), "--list", str(d / "cand.txt"), "--head",
                      str(d / "fc_text.h5")]) == 2
    _one_line_error(capsys, "timm.h5", "not an open_clip feature file")
    assert build(d, "--p_low", "50") == 2
    _one_line_error(capsys, "--p_low 50", "--p_high 40")
    write_fc(d / "fc_two.h5", W[:2], np.zeros(2), ["tool", "sea animal"], backend="open_clip",
             model="toy-clip", logit_scale=SCALE)
    assert sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--list", str(d / "cand.txt"), "--head",
                      str(d / "fc_two.h5")]) == 2
    _one_line_error(capsys, "fc_two.h5", "'bird'")
    write_fc(d / "fc_other.h5", W, np.zeros(3), CLASSES, backend="open_clip", model="other-clip",
             logit_scale=SCALE)
    assert sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--list", str(d / "cand.txt"), "--head",
                      str(d / "fc_other.h5")]) == 2
    _one_line_error(capsys, "fc_other.h5", "other-clip", "toy-clip")
    (d / "bad.csv").write_text("path,superclass\na.jpg,tool\n")
    assert sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--list", str(d / "bad.csv"), "--head",
                      str(d / "fc_text.h5")]) == 2
    _one_line_error(capsys, "bad.csv", "path, superclass, subclass")
    assert sood_main(["build", str(d / "cand.h5"), str(d / "o"), "--head", str(d / "fc_text.h5")]) == 2
    _one_line_error(capsys, "cand.h5", "--list")
    assert not (d / "o").exists()  # nothing was written by any refused run


def test_text_embeddings_from_the_files_open_clip_model(tmp_path, capsys):
    """Without --head the prompts go through the open_clip model the feature file names (a tiny random one
    here): the head written to fc.h5 equals CLIP's recipe computed prompt by prompt. (Most of this test's time
    is importing open_clip.)"""
    open_clip = pytest.importorskip("open_clip")
    import torch

    from ood.features import file_sha256

    config = tmp_path / "tiny-sood-clip.json"
    config.write_text(json.dumps({"embed_dim": D, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                   "patch_size": 16, "head_width": 16},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-sood-clip").eval()
    ckpt = tmp_path / "clip.pt"
    torch.save(model.state_dict(), ckpt)
    attrs = {"model": str(config), "backend": "open_clip", "checkpoint": str(ckpt),
             "checkpoint_sha256": file_sha256(ckpt)}
    rng = np.random.default_rng(1)
    entries = [(f"{s}/{b}/{i}.jpg", s, b) for s in CLASSES for b in ("p", "q", "r") for i in range(10)]
    write_features(tmp_path / "f.h5", rng.normal(size=(len(entries), D)).astype(np.float32),
                   paths=[e[0] for e in entries], extra={"superclass": [e[1] for e in entries],
                                                         "subclass": [e[2] for e in entries]}, **attrs)
    templates = ["a photo of a {}.", "{} in the wild"]
    (tmp_path / "t.txt").write_text("\n".join(templates) + "\n")
    assert sood_main(["build", str(tmp_path / "f.h5"), str(tmp_path / "out"), "--templates", str(tmp_path / "t.txt"),
                      "--device", "cpu", "--features_out", "--quiet"]) == 0
    head = read_head(tmp_path / "out" / "fc.h5")
    assert head.class_names == sorted(CLASSES)  # no class ids given: sorted names
    tokenizer = open_clip.get_tokenizer("tiny-sood-clip")
    with torch.no_grad():
        for k, name in enumerate(head.class_names):
            embs = [model.encode_text(tokenizer([t.format(name.replace("_", " "))]))[0] for t in templates]
            mean = sum(e / e.norm() for e in embs) / len(embs)
            want = model.logit_scale.exp() * mean / mean.norm()
            np.testing.assert_allclose(head.weight[k], want.numpy(), rtol=1e-4, atol=1e-5)
    rec = json.loads((tmp_path / "out" / "sood_build.json").read_text())
    assert rec["text"]["templates"] == templates
    assert rec["text"]["logit_scale"] == pytest.approx(model.logit_scale.exp().item(), rel=1e-6)
    capsys.readouterr()
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "other.pt")
    assert sood_main(["build", str(tmp_path / "f.h5"), str(tmp_path / "o2"), "--checkpoint",
                      str(tmp_path / "other.pt"), "--quiet"]) == 2
    _one_line_error(capsys, "other.pt", "sha256")

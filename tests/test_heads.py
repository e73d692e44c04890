"""Head training on cached features (MOS recipe, group and flat softmax), group layouts, and the heads CLI."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ood.features import read_head, write_features
from ood.heads import GroupHead, GroupScorer, group_accuracy, kmeans_groups, read_group_head, read_groups, train_head
from ood.heads.__main__ import main as heads_main
from ood.heads.groups import group_loss_grad, one_hot
from ood.heads.train import bit_schedule, learning_rate, schedule, softmax_loss_grad

C, D, G = 12, 32, 3


def sample(rng, classes, n):
    """Non-negative features where class c lights up dimensions 2c and 2c+1 (held-out classes light others)."""
    y = rng.choice(classes, n)
    x = np.abs(rng.normal(size=(n, D))) * 0.5
    x[np.arange(n), 2 * y] += 4
    x[np.arange(n), 2 * y + 1] += 4
    return x.astype(np.float32), y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices train faster on one thread, above all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x, y = sample(rng, np.arange(C), 2000)
    g = np.arange(C) % G
    head, recipe = train_head(x, y, C, g, epochs=30, seed=0, device="cpu")
    return head, recipe, x, y, g


def test_group_softmax_learns_separable_features_and_flags_held_out_classes(trained):
    head, recipe, _, _, g = trained
    rng = np.random.default_rng(1)
    xt, yt = sample(rng, np.arange(C), 400)
    xo, _ = sample(rng, np.arange(C, D // 2), 400)
    assert isinstance(head, GroupHead)
    np.testing.assert_array_equal(head.group_of_class, g)
    assert group_accuracy(head, xt, yt, "cpu") > 0.95
    scorer = GroupScorer(head)

    def mos(x):
        return -torch.exp(scorer.others_log_prob(torch.as_tensor(x))).min(1).values.numpy()
    s_id, s_ood = mos(xt), mos(xo)
    assert s_id.mean() > s_ood.mean()
    assert roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]) > 0.95


def test_training_is_deterministic_with_seed(trained):
    head, _, x, y, g = trained
    again, _ = train_head(x, y, C, g, epochs=30, seed=0, device="cpu")
    other, _ = train_head(x, y, C, g, epochs=30, seed=1, device="cpu")
    np.testing.assert_array_equal(head.weight, again.weight)
    np.testing.assert_array_equal(head.others_bias, again.others_bias)
    assert not np.array_equal(head.weight, other.weight)


def test_group_loss_and_gradients_match_per_sample_cross_entropy():
    rng = np.random.default_rng(2)
    g = np.array([2, 0, 1, 0, 2, 2, 1])
    z = torch.tensor(rng.normal(size=(9, 7)) * 20, requires_grad=True)
    o = torch.tensor(rng.normal(size=(9, 3)) * 20, requires_grad=True)
    y = rng.integers(0, 7, 9)
    slow = 0.0
    for i in range(9):
        for k in range(3):
            members = np.flatnonzero(g == k)
            logits = torch.cat([o[i, k:k + 1], z[i, members]])
            target = 1 + int(np.flatnonzero(members == y[i])[0]) if g[y[i]] == k else 0
            slow = slow + torch.logsumexp(logits, 0) - logits[target]
    slow = slow / 9
    slow.backward()
    gt = torch.as_tensor(g)
    loss, dz, do = group_loss_grad(z.detach(), o.detach(), torch.as_tensor(y), gt, one_hot(gt, 3, torch.float64))
    np.testing.assert_allclose(float(loss), slow.item(), rtol=1e-10)
    np.testing.assert_allclose(dz.numpy(), z.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(do.numpy(), o.grad.numpy(), atol=1e-12)


def test_flat_loss_gradient_matches_autograd():
    z = torch.tensor(np.random.default_rng(8).normal(size=(6, 5)) * 10, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    torch.nn.functional.cross_entropy(z, y).backward()
    loss, dz = softmax_loss_grad(z.detach(), y)
    assert float(loss) == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), rel=1e-12)
    np.testing.assert_allclose(dz.numpy(), z.grad.numpy(), atol=1e-12)


def test_schedule_follows_the_bit_hyperrule():
    assert bit_schedule(19_999) == [100, 200, 300, 400, 500]
    assert bit_schedule(200_000) == [500, 3000, 6000, 9000, 10_000]
    assert bit_schedule(1_281_167) == [500, 6000, 12_000, 18_000, 20_000]
    steps = [500, 3000, 6000, 9000, 10_000]
    assert learning_rate(0, steps) == 0.0
    assert learning_rate(250, steps) == pytest.approx(0.0015)
    assert learning_rate(3000, steps) == pytest.approx(0.003)
    assert learning_rate(3001, steps) == pytest.approx(0.0003)
    assert learning_rate(9500, steps) == pytest.approx(0.000003)
    assert schedule(5120, epochs=10) == [20, 40, 60, 80, 100]


def test_flat_head_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    x, y = sample(rng, np.arange(C), 1500)
    write_features(tmp_path / "train.h5", x, labels=y, model="toy")
    out = tmp_path / "flat.h5"
    assert heads_main(["train", str(tmp_path / "train.h5"), str(out), "--groups", "none", "--epochs", "10",
                       "--device", "cpu", "--quiet"]) == 0
    head = read_head(out)
    assert head.weight.shape == (C, D)
    assert head.attrs["head_type"] == "flat_softmax" and head.attrs["model"] == "toy"
    assert (np.argmax(x @ head.weight.T + head.bias, 1) == y).mean() > 0.95
    assert "train accuracy" in capsys.readouterr().out
    assert heads_main(["train", str(tmp_path / "train.h5"), str(out), "--groups", "none", "--quiet"]) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["counts_txt", "counts_npy", "index_txt", "index_npy"])
def test_group_files_in_both_forms_reach_the_head_file(tmp_path, form):
    counts, index = [5, 4, 3], np.array([0] * 5 + [1] * 4 + [2] * 3)
    if form == "index_txt" or form == "index_npy":
        index = np.array([1, 0, 2, 2, 1, 0, 0, 1, 2, 0, 1, 0])
    values = counts if form.startswith("counts") else index
    path = tmp_path / ("groups.npy" if form.endswith("npy") else "groups.txt")
    if form.endswith("npy"):
        np.save(path, np.asarray(values))
    else:
        path.write_text("\n".join(str(v) for v in values) + "\n")
    np.testing.assert_array_equal(read_groups(path), index)

    rng = np.random.default_rng(4)
    x, y = sample(rng, np.arange(C), 600)
    write_features(tmp_path / "train.h5", x, labels=y)
    out = tmp_path / "group.h5"
    assert heads_main(["train", str(tmp_path / "train.h5"), str(out), "--groups", str(path), "--epochs", "2",
                       "--device", "cpu", "--quiet"]) == 0
    head = read_group_head(out)
    np.testing.assert_array_equal(head.group_of_class, index)
    assert head.others_weight.shape == (3, D) and head.weight.shape == (C, D)
    assert read_head(out).attrs["head_type"] == "group_softmax"


@pytest.mark.parametrize("text, problem", [("0 2 2 0", "group 1 has no classes"), ("3 0.5", "integers"),
                                           ("3 -1 4", "positive integers")])
def test_bad_group_files_are_named(tmp_path, text, problem):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as e:
        read_groups(path)
    assert str(path) in str(e.value)


def test_kmeans_groups_cluster_class_means():
    rng = np.random.default_rng(5)
    # 9 classes in 3 directions, interleaved in class order
    directions = np.eye(3, 16) * 10
    true = np.array([2, 0, 1, 1, 2, 0, 0, 2, 1])
    means = directions[true] + rng.normal(size=(9, 16)) * 0.3
    got = kmeans_groups(means, 3, seed=0)
    # the same partition, numbered by the smallest class of each group
    np.testing.assert_array_equal(got, [0, 1, 2, 2, 0, 1, 1, 0, 2])
    with pytest.raises(ValueError, match="between 1 and the 9 classes"):
        kmeans_groups(means, 10)


def test_kmeans_from_the_cli(tmp_path):
    rng = np.random.default_rng(6)
    x, y = sample(rng, np.arange(C), 600)
    write_features(tmp_path / "train.h5", x, labels=y)
    out = tmp_path / "km.h5"
    assert heads_main(["train", str(tmp_path / "train.h5"), str(out), "--groups", "kmeans:4", "--epochs", "1",
                       "--device", "cpu", "--quiet"]) == 0
    g = read_group_head(out).group_of_class
    assert g.size == C and set(g.tolist()) == {0, 1, 2, 3} and g[0] == 0


def test_cli_rejects_unlabelled_train_rows(tmp_path, capsys):
    rng = np.random.default_rng(7)
    x, y = sample(rng, np.arange(C), 100)
    y[5] = -1
    write_features(tmp_path / "train.h5", x, labels=y)
    assert heads_main(["train", str(tmp_path / "train.h5"), str(tmp_path / "h.h5"), "--groups", "kmeans:2",
                       "--device", "cpu", "--quiet", "--num_classes", str(C)]) == 2
    assert "train labels outside" in capsys.readouterr().err


def test_zeroshot_head_from_a_random_init_open_clip_model(tmp_path, capsys):
    import json

    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tinyclip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tinyclip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    names = ["cat", "dog", "red fox"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    templates = ["a photo of a {}.", "a drawing of the {}."]
    (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")
    out = tmp_path / "zs.h5"
    assert heads_main(["zeroshot", str(tmp_path / "tinyclip.json"), "--checkpoint", str(tmp_path / "tiny.pt"),
                       "--class_names", str(tmp_path / "classes.txt"), "--templates", str(tmp_path / "templates.txt"),
                       str(out), "--device", "cpu"]) == 0
    assert "zero-shot head, 3 classes" in capsys.readouterr().out
    head = read_head(out)
    scale = float(model.logit_scale.detach().exp())
    assert head.attrs["logit_scale"] == pytest.approx(scale)
    assert head.class_names == names and head.attrs["backend"] == "open_clip"
    tokenizer = open_clip.get_tokenizer("tinyclip")
    want = []
    with torch.no_grad():
        for name in names:
            e = model.encode_text(tokenizer([t.format(name) for t in templates])).double().numpy()
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            m = e.mean(0)
            want.append(scale * m / np.linalg.norm(m))
    np.testing.assert_allclose(head.weight, np.array(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(head.bias, 0)


def test_train_refuses_an_existing_or_unwritable_head_before_training(tmp_path, capsys):
    from ood.heads.__main__ import main

    out = tmp_path / "head.h5"
    out.write_text("keep me")
    assert main(["train", str(tmp_path / "missing.h5"), str(out), "--groups", "none"]) == 2
    assert "exists already" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["train", str(tmp_path / "missing.h5"), str(tmp_path), "--groups", "none"]) == 2
    assert "is a directory" in capsys.readouterr().err

"""List readers, auto-detection, the ImageNet-S mask codec, folder scans and the datalists CLI."""
import numpy as np
import pytest
from PIL import Image

from ood import datalists
from ood.data import (IMAGENET_S_IGNORE, MOS_IMAGENET_GROUPS, ListFormatError, decode_imagenet_s_mask,
                      detect_format, encode_imagenet_s_mask, read_imagenet_s_mask, read_labels, read_list,
                      scan_folder)


def write(tmp_path, name, lines, newline="\n", bom=False):
    path = tmp_path / name
    path.write_bytes(("\ufeff" if bom else "").encode() + newline.join(lines).encode("utf-8") + newline.encode())
    return path


# --------------------------------------------------------------------------------------------- vim / mos


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_vim_spaces_blank_lines_and_line_endings(tmp_path, newline):
    lines = ["a/one.jpg 3", "", "dir with space/two 2.jpg 7", "   ", "no label here.jpg", "img 12.jpg", "x.png -1"]
    data = read_list(write(tmp_path, "l.txt", lines, newline, bom=True), "vim")
    assert data.paths == ["a/one.jpg", "dir with space/two 2.jpg", "no label here.jpg", "img 12.jpg", "x.png"]
    assert data.labels.tolist() == [3, 7, -1, -1, -1]
    assert data.labels.dtype == np.int64


def test_vim_malformed_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "l.txt", ["a.jpg 1", "", "42"])
    with pytest.raises(ListFormatError, match=r"l\.txt:3:"):
        read_list(path, "vim")


def test_mos_flat_needs_labels(tmp_path):
    data = read_list(write(tmp_path, "m.txt", ["images/banded/b 1.jpg 0", "images/x.jpg 5"], "\r\n"), "mos")
    assert data.paths == ["images/banded/b 1.jpg", "images/x.jpg"]
    assert data.labels.tolist() == [0, 5]
    path = write(tmp_path, "bad.txt", ["a.jpg 0", "b.jpg"])
    with pytest.raises(ListFormatError, match=r"bad\.txt:2:"):
        read_list(path, "mos")
    with pytest.raises(ListFormatError, match=r"bad\.txt:2:"):
        read_labels(path)


def test_missing_list_file(tmp_path):
    with pytest.raises(ListFormatError, match="no such list file"):
        read_list(tmp_path / "nope.txt")


def test_unknown_format(tmp_path):
    with pytest.raises(ListFormatError, match="unknown list format"):
        read_list(write(tmp_path, "l.txt", ["a.jpg"]), "coco")


# --------------------------------------------------------------------------------------------- mos_group


def test_mos_group_default_imagenet_config(tmp_path):
    assert sum(MOS_IMAGENET_GROUPS) == 1000 and len(MOS_IMAGENET_GROUPS) == 8
    rows = [(0, 328), (2, 2), (1, 371), (7, 1), (4, 0)]
    data = read_list(write(tmp_path, "g.txt", [f"val/n{i}/im {i}.JPEG {g} {k}" for i, (g, k) in enumerate(rows)]),
                     "mos_group")
    expected = []
    for g, k in rows:
        offset = 0
        for j in range(g):
            offset += MOS_IMAGENET_GROUPS[j]
        expected.append(offset + k)
    assert data.labels.tolist() == expected
    assert data.paths[0] == "val/n0/im 0.JPEG"
    assert data.extra["group"] == [str(g) for g, _ in rows]
    assert data.extra["group_index"] == [str(k) for _, k in rows]


@pytest.mark.parametrize("source", ["sequence", "npy", "text", "string"])
def test_mos_group_custom_config(tmp_path, source):
    counts = [2, 3, 1]
    groups = {"sequence": counts, "npy": tmp_path / "g.npy", "text": write(tmp_path, "g.txt", ["2, 3", "1"]),
              "string": "2,3,1"}[source]
    np.save(tmp_path / "g.npy", np.asarray(counts))
    lst = write(tmp_path, "l.txt", ["a.jpg 0 1", "b.jpg 1 0", "c.jpg 1 2", "d.jpg 2 0"])
    assert read_list(lst, "mos_group", groups=groups).labels.tolist() == [1, 2, 4, 5]


def test_mos_group_out_of_range_and_malformed(tmp_path):
    with pytest.raises(ListFormatError, match=r"l\.txt:2: group 1, index 3"):
        read_list(write(tmp_path, "l.txt", ["a.jpg 0 0", "b.jpg 1 3"]), "mos_group", groups=[2, 3])
    with pytest.raises(ListFormatError, match=r"m\.txt:1:"):
        read_list(write(tmp_path, "m.txt", ["a.jpg 0 x"]), "mos_group")
    with pytest.raises(ListFormatError, match="positive integer class counts"):
        read_list(write(tmp_path, "n.txt", ["a.jpg 0 0"]), "mos_group", groups=[2, 0])


# --------------------------------------------------------------------------------------------- SOOD


def test_sood_classification(tmp_path):
    lines = ["imagenet21k_train/n01/a.JPEG 0 dog golden_retriever", "",
             "imagenet21k_train/my dir/b.JPEG 1 cat tabby", "imagenet21k_train/n01/c.JPEG 0 dog beagle"]
    data = read_list(write(tmp_path, "train_iid.txt", lines, "\r\n"), "sood")
    assert data.paths == ["imagenet21k_train/n01/a.JPEG", "imagenet21k_train/my dir/b.JPEG",
                          "imagenet21k_train/n01/c.JPEG"]
    assert data.labels.tolist() == [0, 1, 0]
    assert data.extra == {"superclass": ["dog", "cat", "dog"], "subclass": ["golden_retriever", "tabby", "beagle"]}
    assert data.classes == ["dog", "cat"]


def test_sood_malformed_and_inconsistent(tmp_path):
    with pytest.raises(ListFormatError, match=r"s\.txt:2:"):
        read_list(write(tmp_path, "s.txt", ["a.JPEG 0 dog x", "b.JPEG dog x y"]), "sood")
    with pytest.raises(ListFormatError, match=r"t\.txt:1:"):
        read_list(write(tmp_path, "t.txt", ["a.JPEG 0 dog"]), "sood")
    with pytest.raises(ListFormatError, match=r"u\.txt:2: class 0 is named 'cat'"):
        read_list(write(tmp_path, "u.txt", ["a.JPEG 0 dog x", "b.JPEG 0 cat y"]), "sood")


def test_sood_segmentation(tmp_path):
    lines = ["imagenet21k_train/n01/a.JPG output_test_easy_sam2/n01/a_mask.png 3 dog beagle",
             "imagenet21k_train/n 02/b.JPG output_test_easy_sam2/n02/b_mask.png 5 cat tabby"]
    data = read_list(write(tmp_path, "seg.txt", lines), "sood_seg")
    assert data.paths == ["imagenet21k_train/n01/a.JPG", "imagenet21k_train/n 02/b.JPG"]
    assert data.extra["mask"] == ["output_test_easy_sam2/n01/a_mask.png", "output_test_easy_sam2/n02/b_mask.png"]
    assert data.labels.tolist() == [3, 5]
    assert data.extra["superclass"] == ["dog", "cat"] and data.classes == []  # ids are not 0..K-1
    with pytest.raises(ListFormatError, match=r"bad\.txt:1:"):
        read_list(write(tmp_path, "bad.txt", ["a.JPG 3 dog beagle"]), "sood_seg")


# --------------------------------------------------------------------------------------------- ImageNet-S


def test_imagenet_s_names_categories_mapping(tmp_path):
    cats = write(tmp_path, "ImageNetS_categories_im50.txt", ["n03", "n01", "n02", "n04355933"])
    names = write(tmp_path, "ImageNetS_im50_validation.txt",
                  ["n02/ILSVRC2012_val_00000007.JPEG n02/ILSVRC2012_val_00000007.png", "",
                   "n03/ILSVRC2012_val_00000001.JPEG n03/ILSVRC2012_val_00000001.png",
                   "n04356056/ILSVRC2012_val_00000009.JPEG n04356056/ILSVRC2012_val_00000009.png"], "\r\n")
    data = read_list(names, "imagenet_s", categories=cats)
    # sorted: n01 -> 1, n02 -> 2, n03 -> 3, n04355933 -> 4; n04356056 is merged into n04355933
    assert data.labels.tolist() == [2, 3, 4]
    assert data.extra["wnid"] == ["n02", "n03", "n04356056"]
    assert data.extra["mask"][1] == "n03/ILSVRC2012_val_00000001.png"
    assert data.classes == ["other", "n01", "n02", "n03", "n04355933"]

    mapping = write(tmp_path, "mapping.txt", ["val/ILSVRC2012_val_00000007.JPEG n02/ILSVRC2012_val_00000007.JPEG",
                                              "val/ILSVRC2012_val_00000001.JPEG n03/ILSVRC2012_val_00000001.JPEG",
                                              "val/ILSVRC2012_val_00000009.JPEG "
                                              "n04356056/ILSVRC2012_val_00000009.JPEG"])
    mapped = read_list(names, "imagenet_s", categories=cats, mapping=mapping)
    assert mapped.paths[0] == "val/ILSVRC2012_val_00000007.JPEG"
    assert mapped.extra["imagenet_s_path"] == data.paths
    assert mapped.labels.tolist() == [2, 3, 4]


def test_imagenet_s_without_categories_and_errors(tmp_path):
    names = write(tmp_path, "semi.txt", ["n01/n01_1.JPEG", "n02/n02_5.JPEG"])
    data = read_list(names, "imagenet_s")
    assert data.labels.tolist() == [-1, -1] and "mask" not in data.extra
    cats = write(tmp_path, "cats.txt", ["n01"])
    with pytest.raises(ListFormatError, match=r"semi\.txt:2: class folder 'n02'"):
        read_list(names, "imagenet_s", categories=cats)
    with pytest.raises(ListFormatError, match=r"bad\.txt:1:"):
        read_list(write(tmp_path, "bad.txt", ["n01/a.JPEG n01/a.png extra"]), "imagenet_s")


def test_imagenet_s_mask_decoding():
    ids = np.array([[0, 1, 255, 256], [257, 919, 1000, 65535]])
    rgb = encode_imagenet_s_mask(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    for i in range(2):
        for j in range(4):
            r, g, b = (int(v) for v in rgb[i, j])
            assert (r, g, b) == (ids[i, j] % 256, ids[i, j] // 256, 0)
            assert r + 256 * g == ids[i, j]
    assert decode_imagenet_s_mask(rgb).tolist() == ids.tolist()
    # the ignore value, written by hand: 1000 = 232 + 3 * 256
    assert decode_imagenet_s_mask(np.array([[[232, 3, 0]]], np.uint8))[0, 0] == IMAGENET_S_IGNORE
    with pytest.raises(ValueError):
        encode_imagenet_s_mask(np.array([65536]))
    with pytest.raises(ValueError):
        decode_imagenet_s_mask(np.zeros((4, 4)))


def test_imagenet_s_mask_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice([0, 5, 300, 919, 1000], size=(6, 7))
    Image.fromarray(encode_imagenet_s_mask(ids)).save(tmp_path / "m.png")
    assert read_imagenet_s_mask(tmp_path / "m.png").tolist() == ids.tolist()


# --------------------------------------------------------------------------------------------- detection


def test_auto_detection(tmp_path):
    cases = {
        "vim": ["dir with space/a.jpg 3", "b.jpg"],
        "mos_group": ["val/n01/a.JPEG 0 328", "val/n02/b.JPEG 2 2"],
        "sood": ["imagenet21k_train/n01/a.JPEG 4 dog beagle"],
        "sood_seg": ["imagenet21k_train/n01/a.JPG masks/n01/a_mask.png 4 dog beagle"],
        "imagenet_s": ["n01/a.JPEG n01/a.png"],
    }
    for fmt, lines in cases.items():
        path = write(tmp_path, f"{fmt}.txt", ["", *lines], "\r\n")
        assert detect_format(path) == fmt
        auto, explicit = read_list(path), read_list(path, fmt)
        assert auto.paths == explicit.paths and auto.labels.tolist() == explicit.labels.tolist()
        assert auto.extra == explicit.extra


def test_options_go_only_to_readers_that_take_them(tmp_path):
    path = write(tmp_path, "l.txt", ["a.jpg 1 0"])
    assert read_list(path, "mos_group", groups=[1, 2], categories=None).labels.tolist() == [1]
    assert read_list(path, "vim", groups=[1, 2]).paths == ["a.jpg 1"]


# --------------------------------------------------------------------------------------------- folders, CLI


def _image(path, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 6, 3), 120, np.uint8)).save(path, fmt)


def test_scan_folder_labels(tmp_path):
    for rel in ["b cls/x 1.jpg", "a/y.png", "a/sub/z.JPEG"]:
        _image(tmp_path / "root" / rel, "JPEG" if rel.lower().endswith(("jpg", "jpeg")) else "PNG")
    (tmp_path / "root" / "a" / "notes.txt").write_text("not an image")
    data = scan_folder(tmp_path / "root")
    assert data.paths == ["a/sub/z.JPEG", "a/y.png", "b cls/x 1.jpg"]
    assert data.labels.tolist() == [0, 0, 1] and data.classes == ["a", "b cls"]
    assert scan_folder(tmp_path / "root", "none").labels.tolist() == [-1, -1, -1]
    _image(tmp_path / "root" / "flat.png")  # an image outside every class folder: no labels
    assert (scan_folder(tmp_path / "root").labels == -1).all()


def test_cli_scan_check_sample(tmp_path, capsys):
    root = tmp_path / "data"
    for rel in ["cat/1.png", "cat/2.png", "dog/3 x.png"]:
        _image(root / rel)
    assert datalists.main(["scan", str(root), "--classes", str(tmp_path / "classes.txt")]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines() == ["cat/1.png 0", "cat/2.png 0", "dog/3 x.png 1"]
    assert (tmp_path / "classes.txt").read_text().split() == ["cat", "dog"]
    lst = tmp_path / "list.txt"
    lst.write_text(listing)
    back = read_list(lst)
    assert back.paths == ["cat/1.png", "cat/2.png", "dog/3 x.png"] and back.labels.tolist() == [0, 0, 1]

    assert datalists.main(["check", str(lst), str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "2 classes" in out and out.rstrip().endswith("ok")

    (root / "cat" / "2.png").write_bytes(b"broken")
    lst.write_text(listing + "cat/missing.png 0\n")
    assert datalists.main(["check", str(lst), str(root)]) == 1
    out = capsys.readouterr().out
    assert "images missing: 1: cat/missing.png" in out
    assert "images unreadable: 1: cat/2.png" in out

    assert datalists.main(["sample", str(lst), "2", "--seed", "3"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert datalists.main(["sample", str(lst), "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == first
    lines = lst.read_text().splitlines()
    assert len(first) == 2 and all(x in lines for x in first)
    assert [lines.index(x) for x in first] == sorted(lines.index(x) for x in first)


def test_cli_check_masks_and_errors(tmp_path, capsys):
    root, masks = tmp_path / "img", tmp_path / "masks"
    _image(root / "n01/a.JPG", "JPEG")
    _image(masks / "n01/a_mask.png")
    lst = write(tmp_path, "seg.txt", ["n01/a.JPG n01/a_mask.png 1 dog beagle",
                                      "n01/a.JPG n01/gone_mask.png 1 dog beagle"])
    assert datalists.main(["check", str(lst), str(root), "--mask_root", str(masks)]) == 1
    assert "masks missing: 1: n01/gone_mask.png" in capsys.readouterr().out
    assert datalists.main(["check", str(write(tmp_path, "bad.txt", ["a.JPG x dog y"])), str(root),
                           "--list_format", "sood"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert datalists.main(["scan", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("lines, fmt", [
    (["val/n01/a.JPEG 0 328"], "mos_group"),  # read as vim, the path would be 'val/n01/a.JPEG 0'
    (["n01/a.JPEG n01/a.png"], "imagenet_s"),  # read as vim, two file names glued into one path
    (["n01/a.JPEG"], "vim"),  # imagenet_s without masks reads the same paths and labels
    (["dir with space/two 2.jpg 7", "no label here.jpg"], "vim"),
    (["imagenet21k_train/my dir/b.JPEG 1 cat tabby"], "sood"),  # as sood_seg the image would be 'imagenet21k_train/my'
    (["a.JPG masks/a_mask.png 4 dog beagle"], "sood_seg"),
    (["a.jpg 0 3", "b.jpg 7"], "vim"),  # no format fits both lines: the reader then names the bad line
])
def test_auto_detection_by_plausible_paths(tmp_path, lines, fmt):
    path = write(tmp_path, "l.txt", lines)
    assert detect_format(path) == fmt


@pytest.mark.parametrize("lines, formats", [
    (["n01/a 0 1"], ("vim", "mos_group")),  # 'n01/a 0' label 1, or group 0 index 1 of 'n01/a'
    (["scans/a b 3 dog x"], ("vim", "sood")),  # no extensions: 'scans/a b' class 3, or no label at all
    (["img_1 0 12", "img_2 3 4"], ("vim", "mos_group")),
])
def test_ambiguous_lists_are_refused_naming_the_line(tmp_path, lines, formats):
    path = write(tmp_path, "amb.txt", ["", *lines])
    with pytest.raises(ListFormatError, match=r"amb\.txt:2: .* fits more than one list format") as e:
        read_list(path)
    assert all(f in str(e.value) for f in formats) and "--list_format" in str(e.value)
    assert len(read_list(path, formats[1] if formats[0] == "vim" else formats[0])) == len(lines)


def test_read_list_says_which_format_it_read(tmp_path, capsys):
    path = write(tmp_path, "g.txt", ["val/a.JPEG 0 1"])
    assert read_list(path).format == "mos_group" and read_list(path, "vim").format == "vim"
    assert datalists.main(["check", str(path), str(tmp_path)]) == 1
    assert "format mos_group (auto-detected" in capsys.readouterr().out

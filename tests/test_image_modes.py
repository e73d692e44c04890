"""Every PIL image mode decodes to the 8-bit RGB a viewer shows (ood.runtime.load_image / to_rgb).

Each expected image is computed here from the mode's definition, pixel by pixel in float64: 16-bit grey
v / 257, float grey 0..1, alpha composited over white, premultiplied alpha, CMYK, CIE L*a*b*, YCbCr, HSV.
Where a file format holds the mode, the image goes through a file and ``load_image``.
"""
import colorsys
import math

import numpy as np
import pytest
from PIL import Image

from ood.runtime import load_image, to_rgb


def grey(values):
    return [[(v, v, v) for v in row] for row in values]


def round_half_up(x):
    return int(math.floor(x + 0.5))


def over_white(colour, alpha):
    """colour (0-255) with opacity alpha (0-255) over a white page, rounded."""
    return round_half_up(colour * alpha / 255 + 255 * (1 - alpha / 255))


def decoded(img, tmp_path, fmt):
    """The image through a file of format ``fmt`` and load_image, or through to_rgb alone (fmt None)."""
    if fmt is None:
        out = to_rgb(img)
    else:
        path = tmp_path / f"img.{fmt.lower()}"
        img.save(path, fmt)
        out = load_image(path)
    assert out.mode == "RGB"
    return np.asarray(out).astype(np.int64)


def assert_pixels(got, expected, tol=0):
    expected = np.asarray(expected, dtype=np.int64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tol, (got.tolist(), expected.tolist())


def test_mode_1(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    got = decoded(Image.fromarray(bits), tmp_path, "PNG")
    assert_pixels(got, grey([[255 * int(b) for b in row] for row in bits]))


def test_mode_L(tmp_path):
    v = np.array([[0, 17, 128], [200, 254, 255]], np.uint8)
    assert_pixels(decoded(Image.fromarray(v, "L"), tmp_path, "PNG"), grey(v.tolist()))


def test_mode_P_without_transparency(tmp_path):
    palette = [(10, 20, 30), (200, 100, 0), (0, 255, 9)]
    img = Image.new("P", (3, 1))
    img.putpalette([c for rgb in palette for c in rgb] + [0] * (768 - 9))
    for x in range(3):
        img.putpixel((x, 0), x)
    assert_pixels(decoded(img, tmp_path, "PNG"), [palette])


def test_mode_P_with_a_transparent_index(tmp_path):
    palette = [(10, 20, 30), (200, 100, 0)]
    img = Image.new("P", (2, 1))
    img.putpalette([c for rgb in palette for c in rgb] + [0] * (768 - 6))
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # index 0 is fully transparent: a viewer shows the page behind it
    assert_pixels(decoded(img, tmp_path, "PNG"), [[(255, 255, 255), (200, 100, 0)]])


def test_mode_P_with_an_rgba_palette():
    img = Image.new("P", (2, 1))
    img.putpalette([40, 80, 120, 100, 0, 0, 0, 255] + [0] * 1016, "RGBA")
    img.putpixel((1, 0), 1)
    expected = [[tuple(over_white(c, 100) for c in (40, 80, 120)), (0, 0, 0)]]
    assert_pixels(decoded(img, None, None), expected)


def test_mode_PA():
    img = Image.new("PA", (2, 1))
    img.putpalette([200, 10, 60] + [0] * 765)
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (0, 128))
    expected = [[(255, 255, 255), tuple(over_white(c, 128) for c in (200, 10, 60))]]
    assert_pixels(decoded(img, None, None), expected)


def test_mode_LA(tmp_path):
    la = np.array([[[100, 0], [100, 128], [100, 255], [7, 3]]], np.uint8)
    expected = [[(over_white(v, a),) * 3 for v, a in row] for row in la.tolist()]
    assert_pixels(decoded(Image.fromarray(la, "LA"), tmp_path, "PNG"), expected)


def test_mode_RGBA(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [10, 200, 30, 64], [0, 0, 0, 128]]], np.uint8)
    expected = [[tuple(over_white(c, p[3]) for c in p[:3]) for p in row] for row in rgba.tolist()]
    assert_pixels(decoded(Image.fromarray(rgba, "RGBA"), tmp_path, "PNG"), expected)


def test_mode_RGBa_premultiplied():
    # premultiplied: the stored colour is colour * alpha / 255, so over white it is stored + 255 - alpha
    pixels = [(50, 100, 150, 200), (0, 0, 0, 0), (255, 255, 255, 255)]
    img = Image.new("RGBa", (3, 1))
    for x, p in enumerate(pixels):
        img.putpixel((x, 0), p)
    expected = [[tuple(c + 255 - p[3] for c in p[:3]) for p in pixels]]
    assert_pixels(decoded(img, None, None), expected)


def test_mode_La_premultiplied():
    img = Image.frombytes("La", (2, 1), bytes([60, 128, 0, 0]))
    assert_pixels(decoded(img, None, None), [[(60 + 127,) * 3, (255,) * 3]])


def test_transparent_colour_of_L_and_RGB(tmp_path):
    img = Image.fromarray(np.array([[50, 60]], np.uint8), "L")
    img.info["transparency"] = 50
    assert_pixels(decoded(img, tmp_path, "PNG"), [[(255, 255, 255), (60, 60, 60)]])
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8), "RGB")
    rgb.info["transparency"] = (1, 2, 3)
    assert_pixels(decoded(rgb, tmp_path, "PNG"), [[(255, 255, 255), (4, 5, 6)]])


@pytest.mark.parametrize("mode, dtype, fmt", [("I;16", "<u2", "PNG"), ("I;16B", ">u2", None), ("I;16L", "<u2", None)])
def test_16_bit_grey(tmp_path, mode, dtype, fmt):
    v = [0, 1, 128, 129, 257, 32767, 32768, 65278, 65535]
    img = Image.frombytes(mode, (len(v), 1), np.array(v, dtype).tobytes())
    expected = grey([[round_half_up(x / 257) for x in v]])
    assert_pixels(decoded(img, tmp_path, fmt), expected)


def test_mode_I_as_16_bit(tmp_path):
    v = [-5, 0, 255, 256, 40000, 65535, 70000]
    img = Image.fromarray(np.array([v], np.int32), "I")
    expected = grey([[round_half_up(min(max(x, 0), 65535) / 257) for x in v]])
    assert_pixels(decoded(img, tmp_path, "TIFF"), expected)


def test_16_bit_pgm_through_a_file(tmp_path):
    """A 10-bit PGM (maxval 1023): PIL scales it to 16 bits, so 1023 is white and 512 mid grey."""
    path = tmp_path / "a.pgm"
    path.write_bytes(b"P5\n3 1\n1023\n" + np.array([0, 512, 1023], ">u2").tobytes())
    got = np.asarray(load_image(path)).astype(np.int64)
    assert_pixels(got, grey([[0, round_half_up(512 / 1023 * 255), 255]]), tol=1)


def test_mode_F(tmp_path):
    v = [-0.5, 0.0, 0.25, 0.5, 1.0, 2.0, float("nan")]
    img = Image.fromarray(np.array([v], np.float32), "F")
    expected = grey([[0 if math.isnan(x) else round_half_up(min(max(x, 0.0), 1.0) * 255) for x in v]])
    assert_pixels(decoded(img, tmp_path, "TIFF"), expected)


def test_mode_CMYK(tmp_path):
    pixels = [(0, 0, 0, 0), (255, 0, 0, 0), (100, 50, 0, 128), (0, 0, 0, 255), (30, 60, 90, 20)]
    img = Image.new("CMYK", (len(pixels), 1))
    for x, p in enumerate(pixels):
        img.putpixel((x, 0), p)
    exact = [[tuple((255 - c) * (255 - p[3]) / 255 for c in p[:3]) for p in pixels]]
    got = decoded(img, tmp_path, "TIFF")
    assert np.abs(got - np.asarray(exact)).max() <= 0.5 + 1e-9


def srgb_of_lab(L, a, b):
    """CIE L*a*b* (D50) to 8-bit sRGB: XYZ (D50), Bradford adaptation to D65, the sRGB matrix and curve."""
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    inv = [t ** 3 if t ** 3 > 216 / 24389 else (116 * t - 16) * 27 / 24389 for t in (fx, fy, fz)]
    xyz50 = np.array([0.96422 * inv[0], inv[1], 0.82521 * inv[2]])
    bradford = np.array([[0.9555766, -0.0230393, 0.0631636], [-0.0282895, 1.0099416, 0.0210077],
                         [0.0122982, -0.0204830, 1.3299098]])
    to_rgb_lin = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                           [0.0556434, -0.2040259, 1.0572252]])
    lin = np.clip(to_rgb_lin @ (bradford @ xyz50), 0, 1)
    out = [12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055 for c in lin]
    return tuple(round_half_up(255 * c) for c in out)


def test_mode_LAB():
    # PIL's LAB: L* scaled to 0-255, a* and b* offset by 128
    pixels = [(0, 128, 128), (128, 128, 128), (255, 128, 128), (140, 180, 128), (100, 128, 60)]
    img = Image.new("LAB", (len(pixels), 1))
    for x, p in enumerate(pixels):
        img.putpixel((x, 0), p)
    expected = [[srgb_of_lab(p[0] * 100 / 255, p[1] - 128, p[2] - 128) for p in pixels]]
    assert_pixels(decoded(img, None, None), expected, tol=3)


def test_mode_YCbCr():
    pixels = [(0, 128, 128), (255, 128, 128), (81, 90, 240), (145, 54, 34), (41, 240, 110)]
    img = Image.new("YCbCr", (len(pixels), 1))
    for x, p in enumerate(pixels):
        img.putpixel((x, 0), p)

    def jpeg(y, cb, cr):  # the JFIF conversion
        rgb = (y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128))
        return tuple(min(255, max(0, round_half_up(c))) for c in rgb)
    assert_pixels(decoded(img, None, None), [[jpeg(*p) for p in pixels]], tol=1)


def test_mode_HSV():
    pixels = [(0, 255, 255), (85, 255, 128), (170, 100, 200), (30, 0, 90)]
    img = Image.new("HSV", (len(pixels), 1))
    for x, p in enumerate(pixels):
        img.putpixel((x, 0), p)
    expected = [[tuple(round_half_up(255 * c) for c in colorsys.hsv_to_rgb(h / 255, s / 255, v / 255))
                 for h, s, v in pixels]]
    assert_pixels(decoded(img, None, None), expected, tol=1)


def test_modes_RGB_and_RGBX(tmp_path):
    rgb = np.array([[[0, 10, 20], [250, 128, 3]]], np.uint8)
    assert_pixels(decoded(Image.fromarray(rgb, "RGB"), tmp_path, "PNG"), rgb.tolist())
    rgbx = Image.frombytes("RGBX", (2, 1), bytes([0, 10, 20, 99, 250, 128, 3, 7]))
    assert_pixels(decoded(rgbx, None, None), rgb.tolist())


def test_truncated_file_fails_while_decoding(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError):
        load_image(path)

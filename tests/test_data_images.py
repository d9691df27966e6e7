"""Images in any mode PIL opens become RGB tensors; broken files give one line naming the file."""
import numpy as np
import pytest
from PIL import Image

from fcos.data import DataError, load_image, to_tensor


def save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"),
                                      ("I;16", "png"), ("LA", "png"), ("1", "png"), ("RGB", "jpg")])
def test_every_mode_becomes_rgb(tmp_path, mode, ext):
    img = Image.new(mode, (40, 30))
    path = save(tmp_path, f"x.{ext}", img)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    t = to_tensor(out)
    assert t.shape == (3, 30, 40) and 0 <= t.min() <= t.max() <= 1


def test_16_bit_range_is_kept(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 65535
    out = np.asarray(load_image(save(tmp_path, "d.png", Image.fromarray(a))))
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6                       # rotate 90 degrees
    path = save(tmp_path, "r.jpg", img, exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize("content,problem", [(b"", "not an image"), (b"hello", "not an image")])
def test_not_an_image(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_and_missing(tmp_path):
    full = save(tmp_path, "full.jpg", Image.effect_noise((64, 64), 50).convert("RGB"))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(DataError, match="cut.jpg: unreadable image"):
        load_image(cut)
    with pytest.raises(DataError, match="nothere.jpg: image file not found"):
        load_image(tmp_path / "nothere.jpg")

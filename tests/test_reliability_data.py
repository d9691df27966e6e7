"""Library-side reliability (issue 15): FIFOs, size limits, bounded target assignment, linear COCO reading,
worker-side data errors, the model's input checks and the path rule for annotation text."""
import json
import os

import pytest
import torch
import yaml
from conftest import run_cli, tiny_params
from PIL import Image

from fcos import FCOS
from fcos.data import DataError, DetectionDataset, build_loader, load_image, read_coco
from fcos.data import coco as coco_module
from fcos.data.dataset import empty_record
from fcos.data.images import image_size
from fcos.data.sanitize import safe_path
from fcos.data.voc import stable_image_ids
from fcos.points import make_points
from fcos.targets import assign_targets

pytestmark = pytest.mark.timeout(300)   # a hang guard (FIFOs): a regression fails instead of blocking the run


@pytest.mark.parametrize("read", [load_image, image_size, lambda p: read_coco(p)], ids=["load", "size", "coco"])
def test_fifo_is_refused_without_opening_it(tmp_path, read):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="photo.jpg: not a regular file"):
        read(fifo)


def test_pixel_limit_is_read_from_the_header_and_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(path)                   # 100 megapixels in a few hundred KB
    assert path.stat().st_size < 1_000_000
    too_large = r"big.png: image too large \(10000x10000 = 100 megapixels; the limit is 50"
    for read in (load_image, image_size):
        with pytest.raises(DataError, match=too_large):
            read(path)
    monkeypatch.setattr("fcos.data.images.MAX_PIXELS", 100_000_000)
    assert image_size(path) == (10000, 10000)


def random_boxes(g, n, size=160.0):
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat((xy, xy + wh), 1)


def test_chunked_assignment_is_identical_and_bounded(monkeypatch):
    g = torch.Generator().manual_seed(0)
    points, strides, levels = make_points([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)], (8, 16, 32, 64, 128),
                                          torch.device("cpu"))
    lo = torch.tensor([0.0, 64, 128, 256, 512])[levels]
    hi = torch.tensor([64.0, 128, 256, 512, float("inf")])[levels]
    boxes = torch.stack([random_boxes(g, 300), random_boxes(g, 300)])
    boxes[0, 150:] = boxes[0, :150]                              # equal areas: the first box must win the tie
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 200:] = False                                       # padding
    whole = assign_targets(points, strides, lo, hi, boxes, valid, 1.5, max_elements=10**9)
    assert (whole[0] >= 0).sum() > 100 and (whole[0][0] < 150).all()

    from fcos import targets
    real, seen = targets._candidate_areas, []
    monkeypatch.setattr(targets, "_candidate_areas", lambda *a: seen.append(real(*a).shape) or real(*a))
    chunked = assign_targets(points, strides, lo, hi, boxes, valid, 1.5, max_elements=7000)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert len(seen) > 10 and all(b * p * m <= 7000 for b, p, m in seen)


class CountingList(list):
    """A list that counts how often it is walked."""

    walks = 0

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


def test_coco_image_list_is_walked_once_whatever_the_number_of_orphan_annotations(tmp_path, monkeypatch):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "x.jpg")
    images = [{"id": 1, "file_name": "x.jpg"}] + [{"id": i, "file_name": f"gone{i}.jpg"} for i in range(2, 200)]
    anns = [{"id": i, "image_id": 2 + i % 198, "category_id": 5, "bbox": [1, 1, 5, 5]} for i in range(5000)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 5, "name": "cat"}]}))
    real_loads, walked = json.loads, CountingList()

    def loads(text):
        data = real_loads(text)
        walked.extend(data["images"])
        data["images"] = walked
        return data

    monkeypatch.setattr(coco_module.json, "loads", loads)
    records, _, _ = read_coco(tmp_path / "ann.json", tmp_path / "img")
    assert len(records) == 1 and walked.walks == 1               # the quadratic reader walked it per annotation


def test_data_error_in_a_loader_worker_arrives_as_its_one_line(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 corrupt")
    ds = DetectionDataset([empty_record(1, tmp_path / "a.jpg", 20, 20), empty_record(2, tmp_path / "b.jpg", 20, 20)],
                          ["x"], [1])
    with pytest.raises(DataError) as e:
        list(build_loader(ds, 1, num_workers=2))
    assert str(e.value) == f"{tmp_path / 'b.jpg'}: not an image PIL can read"


@pytest.mark.slow
def test_cli_train_with_workers_and_a_corrupted_image_prints_one_line(project):
    p = tiny_params()
    p["data"]["num_workers"] = 2
    p["tracking"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    assert run_cli("prepare").exit_code == 0
    train = json.loads((project / "data/prepared/train.json").read_text())
    victim = (project / "data/prepared" / train["image_root"] / train["images"][0]["file_name"]).resolve()
    victim.write_bytes(b"\xff\xd8 corrupted after prepare")
    r = run_cli("train")
    lines = [line for line in r.stderr.splitlines() if line.strip()]          # rich may leave a blank line
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: data/prepared/")
    assert lines[0].endswith(f"{victim.name}: not an image PIL can read")


@pytest.fixture(scope="module")
def model():
    return FCOS(num_classes=3, fpn_channels=16, head_convs=1, gn_groups=8, min_size=64, max_size=96)


@pytest.mark.parametrize("images,targets,message", [
    ([], None, "no images"),
    ([torch.rand(3, 0, 40)], None, r"image 0: has no pixels \(shape \(3, 0, 40\)\)"),
    ([torch.rand(3, 30, 40)], [{"boxes": torch.tensor([[1.0, 2, float("nan"), 9]]), "labels": torch.tensor([0])}],
     "image 0: box 0 .* is not finite"),
    ([torch.rand(3, 30, 40)], [{"boxes": torch.tensor([[1.0, 2, 5, 9], [0, 0, float("inf"), 9]]),
                                "labels": torch.tensor([0, 1])}], "image 0: box 1 .* is not finite"),
    ([torch.rand(3, 30, 40)], [None], "image 0: target must be a dict with boxes and labels, got NoneType"),
    ([torch.rand(3, 30, 40)], [{"labels": torch.tensor([0])}], "image 0: boxes must be a float tensor"),
])
def test_model_refuses_bad_input_with_a_clear_error(model, images, targets, message):
    from fcos.errors import InputError
    model.train(targets is not None)
    with pytest.raises(InputError, match=message):
        model(images, targets)


def test_float64_images_are_converted(model):
    model.eval()
    img = torch.rand(3, 30, 40, dtype=torch.float64)
    with torch.no_grad():
        a, b = model([img])[0], model([img.float()])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    model.train()
    losses = model([img], [{"boxes": torch.tensor([[2.0, 2, 20, 20]]), "labels": torch.tensor([1])}])
    assert torch.isfinite(losses["final_loss"])


@pytest.mark.parametrize("name,problem", [("../x.jpg", "points outside"), ("/etc/hostname", "points outside"),
                                          ("a/../b.jpg", "points outside"), ("x\0.jpg", "NUL byte"),
                                          ("", "empty file name")])
def test_annotation_text_never_names_a_path_outside_the_dataset(tmp_path, name, problem):
    with pytest.raises(DataError, match=f"ann.xml: .*{problem}"):
        safe_path(tmp_path, name, "ann.xml")


def test_links_held_by_the_dataset_are_followed(tmp_path):
    (tmp_path / "cache").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "cache" / "blob", format="PNG")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").symlink_to(tmp_path / "cache" / "blob")
    path = safe_path(tmp_path / "images", "a.png", "ann.xml")
    assert path == tmp_path / "images" / "a.png" and load_image(path).size == (20, 10)


def test_image_ids_from_stems_stay_exact_in_float64():
    assert stable_image_ids(["2007_000027", "000005"]) == [2007000027, 5]
    assert stable_image_ids(["99999999999999999", "1"]) == [2, 1]             # 1e17 > 2**53: positions instead

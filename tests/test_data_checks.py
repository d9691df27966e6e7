"""Annotation checks: each problem is one line naming the file, counted; strict mode stops at the first."""
import json

import pytest
from PIL import Image

from fcos.data import CocoDataset, DataError, DataReport, VOCDataset


def voc_folder(tmp_path, objects_by_image, size=(64, 48), xml_size=None, image_files=None):
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, objects in objects_by_image.items():
        if image_files is None or stem in image_files:
            Image.new("RGB", size, (90, 90, 90)).save(root / "JPEGImages" / f"{stem}.jpg")
        w, h = xml_size or size
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                       f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(objects_by_image) + "\n")
    return root


def read(root, strict=False, **kw):
    report = DataReport(strict=strict)
    ds = VOCDataset(root, "train", classes=["cat", "dog"], report=report, check_images=True, **kw)
    return ds, report


def test_clean_folder_has_no_problems(tmp_path):
    ds, report = read(voc_folder(tmp_path, {"a": [("cat", (1, 1, 10, 10))]}))
    assert report.ok and len(ds) == 1 and report.summary() == "no annotation problems"


@pytest.mark.parametrize("objects,kind,fragment,kept", [
    ([("cat", (50, 40, 90, 60))], "box outside image", "exceeds the 64x48 image (clipped)", 1),
    ([("cat", (-5, 1, 10, 10))], "box outside image", "(clipped)", 1),
    ([("cat", (10, 10, 9, 20))], "degenerate box", "is empty", 0),   # xmax < xmin (1-based, inclusive)
    ([("cat", (30, 10, 20, 20))], "degenerate box", "is empty", 0),
    ([("horse", (1, 1, 10, 10))], "unknown class", "unknown class 'horse'", 0),
])
def test_box_problems_are_fixed_or_dropped_and_counted(tmp_path, objects, kind, fragment, kept):
    ds, report = read(voc_folder(tmp_path, {"a": objects}))
    assert report.counts[kind] == 1 and len(ds.records[0].boxes) == kept
    assert "a.xml" in report.lines[0] and fragment in report.lines[0] and "\n" not in report.lines[0]
    with pytest.raises(DataError, match="a.xml"):
        read(voc_folder(tmp_path, {"a": objects}), strict=True)


def test_missing_and_broken_files_skip_the_image(tmp_path):
    root = voc_folder(tmp_path, {"a": [], "b": [], "c": [], "d": []}, image_files={"a", "c", "d"})
    (root / "Annotations" / "c.xml").write_text("<annotation><size>")          # malformed XML
    (root / "JPEGImages" / "d.jpg").write_bytes(b"\xff\xd8\xff garbage")        # unreadable image
    ds, report = read(root)
    assert [r.file.stem for r in ds.records] == ["a"]
    assert report.counts == {"missing image": 1, "malformed annotation": 1, "unreadable image": 1}
    assert any("b.xml" in line and "not found" in line for line in report.lines)
    assert any("c.xml" in line and "malformed XML" in line for line in report.lines)
    assert any("d.jpg" in line and "unreadable" in line for line in report.lines)


def test_xml_size_differing_from_the_image_is_reported_and_the_image_wins(tmp_path):
    ds, report = read(voc_folder(tmp_path, {"a": [("dog", (1, 1, 10, 10))]}, xml_size=(100, 100)))
    assert report.counts["size mismatch"] == 1 and (ds.records[0].width, ds.records[0].height) == (64, 48)


def test_filename_leaving_the_dataset_folder_is_refused(tmp_path):
    root = voc_folder(tmp_path, {"a": []})
    (root / "Annotations" / "a.xml").write_text("<annotation><filename>../../etc/passwd</filename></annotation>")
    with pytest.raises(DataError, match="points outside"):
        read(root)


def coco_files(tmp_path, images, annotations, categories=({"id": 3, "name": "cat"}, {"id": 7, "name": "dog"})):
    (tmp_path / "img").mkdir(exist_ok=True)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return ann


def test_coco_reader_maps_categories_keeps_crowd_and_skips_missing(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("L", (50, 40), 100).save(tmp_path / "img" / "gray.png")           # a grayscale image
    Image.new("RGB", (50, 40)).save(tmp_path / "img" / "rgb.jpg")
    ann = coco_files(tmp_path, [{"id": 1, "file_name": "gray.png", "width": 50, "height": 40},
                                {"id": 2, "file_name": "rgb.jpg", "width": 50, "height": 40},
                                {"id": 3, "file_name": "gone.jpg", "width": 50, "height": 40}],
                     [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 30, 30], "iscrowd": 1},
                      {"id": 3, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5]},
                      {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
                      {"id": 4, "image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    report = DataReport()
    ds = CocoDataset(ann, tmp_path / "img", report=report)
    assert ds.classes == ["cat", "dog"] and ds.cat_ids == [3, 7] and ds.image_ids == [1, 2]
    assert report.counts == {"missing image": 1, "unknown class": 1, "duplicate id": 1}
    image, target = ds[0]
    assert image.shape == (3, 40, 50)
    assert target["labels"].tolist() == [1, 0] and target["iscrowd"].tolist() == [False, True]
    assert target["boxes"][0].tolist() == [1, 2, 11, 22]
    train = CocoDataset(ann, tmp_path / "img", train=True)
    train.flip_prob = 0
    assert train[0][1]["labels"].tolist() == [1]                                 # crowd never a positive


@pytest.mark.parametrize("text,message", [
    ("{not json", "malformed JSON"), ("", "malformed JSON"), ('{"images": []}', "not a COCO instances file"),
])
def test_coco_malformed_json_is_one_line(tmp_path, text, message):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as e:
        CocoDataset(path)
    assert str(path) in str(e.value)


def test_coco_path_escape_is_refused(tmp_path):
    ann = coco_files(tmp_path, [{"id": 1, "file_name": "../../secret.jpg"}], [])
    with pytest.raises(DataError, match="points outside"):
        CocoDataset(ann, tmp_path / "img")

"""The bad-input corpus: every case through the real CLI gives a counted, reported skip (the run goes on) or
a one-line error naming the file and a non-zero exit; never a traceback, never a half-written output."""
import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, tiny_params
from PIL import Image

GOOD_XML = ("<annotation><filename>{stem}.jpg</filename><size><width>64</width><height>48</height></size>"
            "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
            "<ymax>30</ymax></bndbox></object></annotation>")


def xml_with(box="<xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax>", name="cat", stem="bad",
             size="<width>64</width><height>48</height>", filename=None):
    return (f"<annotation><filename>{filename or stem + '.jpg'}</filename><size>{size}</size><object><name>{name}"
            f"</name><difficult>0</difficult><bndbox>{box}</bndbox></object></annotation>")


def jpeg(path, size=(64, 48), mode="RGB"):
    Image.new(mode, size, 120).save(path)


def voc_project(project, bad_image=None, bad_xml=None, split_extra=""):
    """A VOC folder with three good images and one 'bad' item; params point at it."""
    root = project / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in ("a", "b", "c"):
        jpeg(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(GOOD_XML.format(stem=stem))
    if bad_image is not None:
        bad_image(root / "JPEGImages" / "bad.jpg")
    if bad_xml is not None:
        (root / "Annotations" / "bad.xml").write_text(bad_xml)
    (root / "ImageSets/Main/train.txt").write_text("a\nb\nbad\n" + split_extra)
    (root / "ImageSets/Main/test.txt").write_text("c\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    p = tiny_params(data={**tiny_params()["data"], "format": "voc", "root": str(root), "train_split": "train",
                          "test_split": "test", "val_fraction": 0.0})
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    return root


def write(content: bytes):
    return lambda path: path.write_bytes(content)


def truncated(path):
    Image.effect_noise((64, 48), 40).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:300])


def exif_rotated(path):
    img = Image.new("RGB", (48, 64), 100)          # stored portrait, shown landscape 64x48 after rotation
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())


def huge(path):
    Image.new("L", (14000, 13000)).save(path.with_suffix(".png"))
    path.with_suffix(".png").rename(path)


def mode(m, size=(64, 48)):
    return lambda path: Image.new(m, size).save(path, format="PNG" if m in ("I;16", "P", "RGBA", "LA") else "JPEG")


# (case id, image writer or None, xml text or None, extra split lines, expected: ("ok",) | ("skip", kind, text))
VOC_CASES = [
    ("corrupt-image", write(b"\xff\xd8\xff\xe0 not really"), GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "bad.jpg")),
    ("truncated-image", truncated, GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "bad.jpg")),
    ("zero-byte-image", write(b""), GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "bad.jpg")),
    ("text-not-image", write(b"hello world"), GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "bad.jpg")),
    ("very-large-image", huge, GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "too large")),
    ("grayscale", mode("L"), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("cmyk", mode("CMYK"), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("rgba", mode("RGBA"), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("palette", mode("P"), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("16-bit-png", mode("I;16"), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("exif-rotated", exif_rotated, GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("missing-image", None, GOOD_XML.format(stem="bad"), "", ("skip", "missing image", "bad.xml")),
    ("missing-annotation", jpeg, None, "", ("skip", "missing annotation", "bad.xml")),
    ("malformed-xml", jpeg, "<annotation><object>", "", ("skip", "malformed annotation", "bad.xml")),
    ("empty-xml", jpeg, "", "", ("skip", "malformed annotation", "bad.xml")),
    ("missing-bndbox-field", jpeg, xml_with(box="<xmin>5</xmin><ymin>5</ymin>"), "", ("skip", "malformed annotation", "no numeric bndbox")),
    ("non-numeric-box", jpeg, xml_with(box="<xmin>a</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax>"), "", ("skip", "malformed annotation", "bad.xml")),
    ("negative-box", jpeg, xml_with(box="<xmin>-10</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax>"), "", ("skip", "box outside image", "clipped")),
    ("out-of-image-box", jpeg, xml_with(box="<xmin>5</xmin><ymin>5</ymin><xmax>300</xmax><ymax>30</ymax>"), "", ("skip", "box outside image", "clipped")),
    ("box-entirely-outside", jpeg, xml_with(box="<xmin>100</xmin><ymin>100</ymin><xmax>200</xmax><ymax>200</ymax>"), "", ("skip", "degenerate box", "dropped")),
    ("degenerate-box", jpeg, xml_with(box="<xmin>10</xmin><ymin>5</ymin><xmax>8</xmax><ymax>30</ymax>"), "", ("skip", "degenerate box", "dropped")),
    ("unknown-class", jpeg, xml_with(name="unicorn"), "", ("skip", "unknown class", "unicorn")),
    ("size-mismatch", jpeg, xml_with(size="<width>640</width><height>480</height>"), "", ("skip", "size mismatch", "640x480")),
    ("duplicate-id", jpeg, GOOD_XML.format(stem="bad"), "bad\n", ("skip", "duplicate id", "listed twice")),
]


@pytest.mark.parametrize("case,image,xml,extra,expected", VOC_CASES, ids=[c[0] for c in VOC_CASES])
def test_voc_corpus(project, case, image, xml, extra, expected):
    voc_project(project, image, xml, extra)
    r = run_cli("prepare")
    assert r.exit_code == 0, r.stderr
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    if expected[0] == "ok":
        assert summary["problems"] == {} and summary["images"]["train"] == 3
        return
    _, kind, text = expected
    assert summary["problems"].get(kind) == 1, summary["problems"]
    line = next(line for line in summary["problem_lines"] if text in line)
    assert "\n" not in line and ("bad" in line or "train.txt" in line)
    assert "Traceback" not in r.stderr


def test_voc_strict_mode_stops_at_the_first_problem(project):
    voc_project(project, jpeg, xml_with(name="unicorn"))
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["data"]["strict"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    r = run_cli("prepare")
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0 and "bad.xml: unknown class 'unicorn'" in r.stderr
    assert not (project / "data/prepared/train.json").exists()


def test_voc_filename_leaving_the_dataset_is_refused(project):
    voc_project(project, jpeg, xml_with(filename="../../../etc/passwd"))
    r = run_cli("prepare")
    assert r.exit_code == 2 and "points outside" in r.stderr and r.stderr.count("\n") == 1


def coco_project(project, text):
    (project / "img").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(project / "img" / "x.jpg")
    (project / "ann.json").write_text(text)
    coco = {"train_ann": "ann.json", "train_images": "img", "test_ann": "ann.json", "test_images": "img"}
    p = tiny_params(data={**tiny_params()["data"], "format": "coco", "root": ".", "coco": coco, "val_fraction": 0.0})
    (project / "params.yaml").write_text(yaml.safe_dump(p))


IMG = {"id": 1, "file_name": "x.jpg", "width": 40, "height": 30}
CAT = {"id": 5, "name": "cat"}
COCO_CASES = [
    ("malformed-json", "{\"images\": [", ("error", "ann.json: malformed JSON")),
    ("empty-json", "", ("error", "ann.json: malformed JSON")),
    ("missing-categories", json.dumps({"images": [IMG]}), ("error", "not a COCO instances file")),
    ("category-without-name", json.dumps({"images": [IMG], "categories": [{"id": 1}]}), ("error", "every category needs")),
    ("image-without-file-name", json.dumps({"images": [IMG, {"id": 2}], "categories": [CAT]}), ("skip", "malformed annotation")),
    ("duplicate-image-id", json.dumps({"images": [IMG, IMG], "categories": [CAT]}), ("skip", "duplicate id")),
    ("duplicate-annotation-id", json.dumps({"images": [IMG], "categories": [CAT], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}] * 2}), ("skip", "duplicate id")),
    ("unknown-category", json.dumps({"images": [IMG], "categories": [CAT], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}]}), ("skip", "unknown class")),
    ("bad-bbox", json.dumps({"images": [IMG], "categories": [CAT], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5]}]}), ("skip", "malformed annotation")),
    ("missing-image-file", json.dumps({"images": [IMG, {**IMG, "id": 2, "file_name": "gone.jpg"}], "categories": [CAT]}),
     ("skip", "missing image")),
    ("path-escape", json.dumps({"images": [{**IMG, "file_name": "../../x.jpg"}], "categories": [CAT]}), ("error", "points outside")),
]


@pytest.mark.parametrize("case,text,expected", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_corpus(project, case, text, expected):
    coco_project(project, text)
    r = run_cli("prepare")
    if expected[0] == "error":
        assert r.exit_code == 2 and expected[1] in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (project / "data/prepared/train.json").exists()
    else:
        assert r.exit_code == 0, r.stderr
        summary = json.loads((project / "data/prepared/summary.json").read_text())
        assert summary["problems"].get(expected[1], 0) >= 1, summary


PARAM_CASES = [
    ("wrong-type", lambda p: p["train"].update(lr="fast"), "train.lr: must be a number"),
    ("negative-lr", lambda p: p["train"].update(lr=-0.1), "train.lr: must be > 0"),
    ("unknown-backbone", lambda p: p["model"].update(backbone="resnet9"), "unknown backbone 'resnet9'"),
    ("missing-section", lambda p: p.pop("eval"), "eval: missing"),
    ("unknown-key", lambda p: p["train"].update(lrr=0.1), "train.lrr: unknown key"),
    ("bool-for-int", lambda p: p["train"].update(epochs=True), "train.epochs: must be an integer"),
    ("bad-choice", lambda p: p["train"].update(optimizer="adam"), "train.optimizer: must be one of sgd, adamw"),
    ("gn-groups", lambda p: p["model"].update(gn_groups=5), "model.gn_groups: must divide"),
    ("missing-voc-folder", lambda p: p["data"].update(format="voc", root="nowhere"), "nowhere: not a VOC folder"),
]


@pytest.mark.parametrize("case,edit,message", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_params_corpus(project, case, edit, message):
    p = tiny_params()
    edit(p)
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    r = run_cli("prepare")
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert all(line.startswith("error: ") for line in r.stderr.strip().splitlines())


def test_yaml_syntax_error_and_missing_params_file(project):
    (project / "params.yaml").write_text("train: [unclosed\n")
    r = run_cli("prepare")
    assert r.exit_code == 2 and "params.yaml: not valid YAML" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("prepare", "--params", "absent.yaml")
    assert r.exit_code == 2 and "absent.yaml: params file not found" in r.stderr


def test_unwritable_output_folder(project):
    Path("data").write_text("a file where the output folder should be")
    r = run_cli("prepare")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr

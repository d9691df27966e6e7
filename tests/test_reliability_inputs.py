"""The bad-input corpus: every case through the real CLI gives a counted, reported skip (the run goes on) or
a one-line error naming the file and a non-zero exit; never a traceback, never a half-written output.
Datasets (VOC, COCO) and damaged outputs here; params files in test_reliability_params.py."""
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, tiny_params
from PIL import Image

pytestmark = pytest.mark.timeout(300)   # a hang guard (FIFOs): a regression fails instead of blocking the run

GOOD_XML = ("<annotation><filename>{stem}.jpg</filename><size><width>64</width><height>48</height></size>"
            "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
            "<ymax>30</ymax></bndbox></object></annotation>")


def xml_with(box="<xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax>", name="cat", stem="bad",
             size="<width>64</width><height>48</height>", filename=None):
    return (f"<annotation><filename>{filename or stem + '.jpg'}</filename><size>{size}</size><object><name>{name}"
            f"</name><difficult>0</difficult><bndbox>{box}</bndbox></object></annotation>")


NO_FILENAME = ("<annotation><size><width>64</width><height>48</height></size><object><name>cat</name><bndbox>"
               "<xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")


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
    if callable(bad_xml):
        bad_xml(root / "Annotations" / "bad.xml")
    elif bad_xml is not None:
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


def megapixels_100(path):
    """A 100-megapixel PNG of a few hundred KB: refused from its header (fcos.data.images.MAX_PIXELS)."""
    Image.new("1", (10000, 10000)).save(path, format="PNG")


def linked(name="bad.jpg"):
    """The image as a link to a file outside the dataset, as a DVC checkout with cache.type symlink has."""
    def make(path):
        cache = path.parents[2] / "cache"
        cache.mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), 120).save(cache / "0f3a", format="JPEG")
        path.with_name(name).symlink_to(cache / "0f3a")
    return make


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
    ("fifo-image", os.mkfifo, GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "not a regular file")),
    ("fifo-annotation", jpeg, os.mkfifo, "", ("skip", "malformed annotation", "not a regular file")),
    ("100-megapixel-png", megapixels_100, GOOD_XML.format(stem="bad"), "", ("skip", "unreadable image", "too large")),
    ("html-named-xml", jpeg, "<html><body>hello</body></html>", "",
     ("skip", "malformed annotation", "not <annotation>")),
    ("symlinked-image", linked(), GOOD_XML.format(stem="bad"), "", ("ok",)),
    ("symlinked-image-found-by-stem", linked("bad.png"), NO_FILENAME, "", ("ok",)),
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


def write_split(name, content: bytes):
    return lambda root: (root / "ImageSets/Main" / name).write_bytes(content)


def fifo_split(root):
    (root / "ImageSets/Main/train.txt").unlink()
    os.mkfifo(root / "ImageSets/Main/train.txt")


def all_train_images_broken(root):
    for stem in ("a", "b", "bad"):
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(b"not an image")


def val_takes_all(root):
    write_split("train.txt", b"a\n")(root)
    p = yaml.safe_load((root.parent / "params.yaml").read_text())
    p["data"]["val_fraction"] = 0.9
    (root.parent / "params.yaml").write_text(yaml.safe_dump(p))


def annotation_names(filename):
    return lambda root: (root / "Annotations/a.xml").write_text(xml_with(stem="a", filename=filename))


# (case id, edit of the VOC folder made by voc_project, the one line expected on stderr)
VOC_ERRORS = [
    ("split-id-leaving-the-dataset", write_split("train.txt", b"a\n../../x\n"),
     "train.txt: file name '../../x.xml' points outside"),
    ("latin-1-split", write_split("train.txt", b"a\ncaf\xe9\n"), "train.txt: not UTF-8 text (byte 0xe9"),
    ("fifo-split", fifo_split, "train.txt: not a regular file"),
    ("empty-train-split", write_split("train.txt", b"\n \n"), "train.txt: lists no images"),
    ("empty-test-split", write_split("test.txt", b""), "test.txt: lists no images"),
    ("no-usable-train-image", all_train_images_broken, "train.txt: the train split has no usable images"),
    ("val-fraction-takes-all", val_takes_all, "data.val_fraction: 0.9 leaves no training image"),
    ("blank-classes-txt", lambda root: (root / "classes.txt").write_text("\n  \n"),
     "classes.txt: lists no class names"),
    ("absolute-filename", annotation_names("/etc/hostname"), "a.xml: file name '/etc/hostname' points outside"),
    ("dotdot-filename", annotation_names("sub/../a.jpg"), "a.xml: file name 'sub/../a.jpg' points outside"),
]


@pytest.mark.parametrize("case,edit,message", VOC_ERRORS, ids=[c[0] for c in VOC_ERRORS])
def test_voc_errors(project, case, edit, message):
    edit(voc_project(project, jpeg, GOOD_XML.format(stem="bad")))
    r = run_cli("prepare")
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (project / "data/prepared/train.json").exists()


def test_voc_split_with_a_utf8_bom_keeps_its_first_image(project):
    root = voc_project(project)
    (root / "ImageSets/Main/train.txt").write_bytes(b"\xef\xbb\xbfa\nb\n")
    r = run_cli("prepare")
    assert r.exit_code == 0, r.stderr
    assert json.loads((project / "data/prepared/summary.json").read_text())["images"]["train"] == 2


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
    if isinstance(text, bytes):
        (project / "ann.json").write_bytes(text)
    else:
        (project / "ann.json").write_text(text)
    coco = {"train_ann": "ann.json", "train_images": "img", "test_ann": "ann.json", "test_images": "img"}
    p = tiny_params(data={**tiny_params()["data"], "format": "coco", "root": ".", "coco": coco, "val_fraction": 0.0})
    (project / "params.yaml").write_text(yaml.safe_dump(p))


IMG = {"id": 1, "file_name": "x.jpg", "width": 40, "height": 30}
CAT = {"id": 5, "name": "cat"}


def ANN(**fields):
    return {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], **fields}


def coco(images=(IMG,), annotations=(), categories=(CAT,)):
    return json.dumps({"images": list(images), "annotations": annotations if isinstance(annotations, int)
                       else list(annotations), "categories": list(categories)})
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
    ("non-object-annotations", coco(annotations=[5, "x", None]), ("skip", "malformed annotation", 3)),
    ("annotations-not-a-list", coco(annotations=5), ("error", "ann.json: 'annotations' must be a list")),
    ("ids-as-lists", coco(images=[IMG, {**IMG, "id": [2]}], annotations=[
        ANN(id=[1]), ANN(id=2, image_id=[1]), ANN(id=3, category_id=[5]), ANN(id=4)]),
     ("skip", "malformed annotation", 4)),
    ("category-id-as-list", coco(categories=[{"id": [5], "name": "cat"}]), ("error", "ann.json: every category needs")),
    ("width-as-list", coco(images=[{**IMG, "width": [40]}]), ("skip", "malformed annotation", 1)),
    ("width-not-a-number", coco(images=[{**IMG, "width": "abc"}]), ("skip", "malformed annotation", 1)),
    ("deeply-nested-json", "[" * 100_000 + "]" * 100_000, ("error", "ann.json: malformed JSON (nested too deeply)")),
    ("nul-in-file-name", coco(images=[{**IMG, "file_name": "x\u0000.jpg"}]),
     ("error", "ann.json: file name 'x\\x00.jpg' contains a NUL byte")),
    ("string-image-id", coco(images=[IMG, {**IMG, "id": "7"}], annotations=[ANN(image_id="7"), ANN(id=2)]),
     ("skip", "malformed annotation", 1)),
    ("float-image-id", coco(images=[IMG, {**IMG, "id": 1.5}], annotations=[ANN(image_id=1.5), ANN(id=2)]),
     ("skip", "malformed annotation", 1)),
    ("image-id-above-2**53", coco(images=[IMG, {**IMG, "id": 2**53 + 1}],
                                  annotations=[ANN(image_id=2**53 + 1), ANN(id=2)]),
     ("skip", "malformed annotation", 1)),
    ("nan-bbox", coco(annotations=[ANN(bbox=[1, 1, float("nan"), 5]), ANN(id=2)]), ("skip", "malformed annotation", 1)),
    ("utf8-bom", "\ufeff" + coco(), ("ok",)),
    ("latin-1-byte", b'{"images": [], "categories": [{"id": 5, "name": "caf\xe9"}]}',
     ("error", "ann.json: not UTF-8 text")),
    ("no-usable-image", coco(images=[{**IMG, "file_name": "gone.jpg"}]),
     ("error", "ann.json: the train split has no usable images")),
]


@pytest.mark.parametrize("case,text,expected", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_corpus(project, case, text, expected):
    coco_project(project, text)
    r = run_cli("prepare")
    if expected[0] == "error":
        assert r.exit_code == 2 and expected[1] in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (project / "data/prepared/train.json").exists()
        return
    assert r.exit_code == 0, r.stderr
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    if expected[0] == "ok":
        assert summary["problems"] == {} and summary["images"]["train"] == 1, summary
    elif len(expected) == 3:   # each problem counted, and the train/test splits (one json) report it twice
        assert summary["problems"] == {expected[1]: 2 * expected[2]} and summary["images"]["train"] == 1, summary
    else:
        assert summary["problems"].get(expected[1], 0) >= 1, summary


def test_unwritable_output_folder(project):
    Path("data").write_text("a file where the output folder should be")
    r = run_cli("prepare")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def one_line(r, message, code=2):
    assert r.exit_code == code and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tracking_uri) -> Path:
    """A tiny project after prepare, train and evaluate, for tests that damage a copy of its outputs."""
    root = tmp_path_factory.mktemp("evaluated")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for stage in ("prepare", "train", "evaluate"):
            assert run_cli(stage).exit_code == 0
    return root


@pytest.mark.parametrize("threshold", [float("nan"), 7, "high", -0.1])
def test_a_damaged_pr_json_is_one_line(evaluated, tmp_path, monkeypatch, threshold):
    project = shutil.copytree(evaluated, tmp_path / "project")
    monkeypatch.chdir(project)
    pr = json.loads((project / "metrics/pr.json").read_text())
    next(iter(pr["per_class"].values()))["threshold"] = threshold
    (project / "metrics/pr.json").write_text(json.dumps(pr))
    one_line(run_cli("visualize"), "metrics/pr.json: a threshold must be null or a number in [0, 1]")

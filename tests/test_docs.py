"""The docs stay true to the code: every module docs/architecture.md names exists and holds the names it
cites; every params.yaml key is documented in docs/params.md."""
import re

import pytest
import yaml
from conftest import ROOT

from pipeline.params import flatten

ROW = re.compile(r"^\| (`[^|]+`(?:, `[^|]+`)*) \| (.+) \|$", re.M)


def rows():
    text = (ROOT / "docs/architecture.md").read_text()
    for m in ROW.finditer(text):
        paths = re.findall(r"`([\w/]+(?:\.py|/))`", m.group(1))
        if paths:
            yield paths, m.group(2)


def defines(files, name: str) -> bool:
    pattern = re.compile(rf"^\s*(?:def|class) {name}\b|^{name}\s*[:=]|^(?:from \S+ )?import .*\b{name}\b", re.M)
    return any(pattern.search(f.read_text()) for f in files)


ALL_SOURCES = sorted(ROOT.glob("fcos/**/*.py")) + sorted(ROOT.glob("pipeline/**/*.py"))


@pytest.mark.parametrize("paths,text", list(rows()), ids=lambda v: v[0] if isinstance(v, list) else "")
def test_architecture_rows_name_real_modules_and_names(paths, text):
    files = []
    for path in paths:
        assert (ROOT / path).exists(), path
        files += sorted((ROOT / path).glob("*.py")) if path.endswith("/") else [ROOT / path]
    # names in backticks that look like code: CamelCase, snake_case, UPPER_CASE or called `name(`
    cited = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)(?:\(|`)", text))
    code_like = {n for n in cited if "_" in n or (n[0].isupper() and n[1:].lower() != n[1:]) or f"`{n}(" in text}
    missing = [n for n in sorted(code_like) if not defines(files, n)]
    elsewhere = [n for n in missing if not defines(ALL_SOURCES, n)]
    assert not elsewhere, f"{paths}: {elsewhere} defined nowhere"
    assert len(missing) <= 1, f"{paths}: {missing} not defined in the module the row describes"


def test_every_params_key_is_documented():
    doc = (ROOT / "docs/params.md").read_text()
    for key in flatten(yaml.safe_load((ROOT / "params.yaml").read_text())):
        section, *rest = key.split(".")
        leaf = ".".join(rest)
        assert f"`{leaf}`" in doc or f"`{leaf.split('.')[-1]}`" in doc or f"{leaf.split('.')[0]}.*" in doc \
            or section == "tune", key

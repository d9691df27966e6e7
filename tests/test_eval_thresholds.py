"""`score_thresh: f1`: per-class thresholds read back from metrics/pr.json, and the params that take them."""
import json

import numpy as np
import pytest
import yaml
from conftest import tiny_params

from pipeline.errors import UserError
from pipeline.eval_analysis import NO_F1_THRESH, PR_METRICS, class_thresholds
from pipeline.params import load_params


def _pr(per_class: dict, all_thresh):
    PR_METRICS.parent.mkdir(parents=True, exist_ok=True)
    PR_METRICS.write_text(json.dumps({"per_class": {c: {"threshold": t} for c, t in per_class.items()},
                                      "all": {"threshold": all_thresh}}))


def test_numbers_and_f1_thresholds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert class_thresholds(0.4, ["a", "b"]).tolist() == [0.4, 0.4]
    assert class_thresholds("0.25", ["a"]).tolist() == [0.25]        # as typed on the command line
    with pytest.raises(UserError, match="metrics/pr.json: not found"):
        class_thresholds("f1", ["a", "b"])
    _pr({"a": 0.61, "b": None, "c": 0.2}, 0.45)                       # b: no true positive -> the all-classes one
    np.testing.assert_allclose(class_thresholds("f1", ["a", "b", "c"]), [0.61, 0.45, 0.2])
    with pytest.raises(UserError, match="the model has"):
        class_thresholds("f1", ["a", "b"])
    _pr({"a": None}, None)                                            # nothing found at all
    assert class_thresholds("f1", ["a"]).tolist() == [NO_F1_THRESH]
    for bad in ("abc", "1.5", -0.1):
        with pytest.raises(UserError, match="must be a number in \\[0, 1\\] or f1"):
            class_thresholds(bad, ["a"])


@pytest.mark.parametrize("value,ok", [("f1", True), (0.3, True), (1, True), ("F1", False), (1.2, False)])
def test_params_take_a_number_or_f1(tmp_path, value, ok):
    p = tiny_params(visualize={"score_thresh": value}, eval={"confusion_thresh": value})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    if ok:
        assert load_params(path).visualize.score_thresh == value
    else:
        with pytest.raises(UserError) as e:
            load_params(path)
        assert str(e.value).splitlines() == [
            f"{path}: eval.confusion_thresh: must be a number in [0, 1] or f1, got {value!r}",
            f"{path}: visualize.score_thresh: must be a number in [0, 1] or f1, got {value!r}"]

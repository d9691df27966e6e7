"""An interrupted `fcos-exp prepare` (Ctrl-C or SIGKILL while images are being generated) leaves the previous
data/prepared exactly as it was: images and annotations always of one run, never a mix."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import tiny_params


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def interrupt_midway(project, sig):
    """Start prepare and send `sig` once its new folder holds some generated images."""
    p = subprocess.Popen([sys.executable, "-m", "pipeline", "prepare"], cwd=project, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300                 # a hang guard only
    while not [*project.glob("data/.prepared-*/shapes/VOCdevkit/VOC2007/JPEGImages/*.png")][5:]:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(p.pid, sig)
    return p.communicate(timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_an_interrupted_prepare_keeps_the_previous_data(tmp_path, sig):
    params = tiny_params()
    params["data"]["shapes"].update(num_trainval=300, num_test=40)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = lambda: subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=600)
    assert run().returncode == 0
    before = digest(tmp_path / "data/prepared")
    params["data"]["shapes"]["seed"] = 7                # other images, other boxes
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _, err = interrupt_midway(tmp_path, sig)
    assert digest(tmp_path / "data/prepared") == before
    if sig == signal.SIGINT:
        assert "interrupted: run `fcos-exp prepare` again" in err and "--resume" not in err
        assert not [*tmp_path.glob("data/.prepared-*")]
    else:
        assert [*tmp_path.glob("data/.prepared-*")]     # what the killed process left ...
    assert run().returncode == 0                        # ... goes with the next prepare
    assert not [*tmp_path.glob("data/.prepared-*")] and digest(tmp_path / "data/prepared") != before

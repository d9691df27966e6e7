"""The best checkpoint and early stopping in `fit`: the best validated epoch's weights are kept beside the last,
`patience` validations without a higher value stop training, ties keep the earlier epoch, and resuming makes
the same decisions as a run never stopped. The expected epochs are read off each run's own validation history,
so the tests hold on any CPU (whose float32 kernels give other values)."""
import pytest
import torch

from fcos import FCOS
from fcos.callbacks import Callback, StopTraining
from fcos.checkpoint import load_checkpoint
from fcos.data import VOCDataset, build_loader, generate_shapes, write_coco_gt
from fcos.engine import TrainConfig, fit


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("shapes"), seed=1, num_trainval=16, num_test=4, image_size=96)
    val = VOCDataset(root, "test")
    return root, val, write_coco_gt(val, root / "val.json")


class Weights(Callback):
    """Each epoch's weights, as the epoch ended."""

    def __init__(self, model):
        self.model, self.by_epoch = model, {}

    def on_epoch_end(self, state, summary):
        self.by_epoch[state.epoch + 1] = {k: v.clone() for k, v in self.model.state_dict().items()}


class StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state, summary):
        if state.epoch + 1 == self.epochs:
            raise StopTraining


def run(shapes, folder, epochs=8, patience=2, lr=0.004, eval_every=1, callbacks=(), resume=False):
    """8 epochs of 4 steps; here validation AP50 rose to epoch 3 and fell after, so patience 2 stopped at 5."""
    root, val, gt = shapes
    torch.manual_seed(123)
    model = FCOS(num_classes=6, fpn_channels=16, head_convs=1, min_size=64, max_size=96, gn_groups=8,
                 center_sampling_radius=2.5)
    train = VOCDataset(root, "trainval", train=True)
    cfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=lr, warmup_epochs=0.5, eval_every=eval_every,
                      patience=patience)
    weights = Weights(model)
    result = fit(model, build_loader(train, 4, shuffle=True, seed=0), cfg, checkpoint_path=folder / "last.pt",
                 classes=train.classes, callbacks=[weights, *callbacks], val_loader=build_loader(val, 4),
                 val_gt=gt, val_cat_ids=val.cat_ids, resume=resume, best_path=folder / "best.pt")
    return result, weights.by_epoch


def expected(history, patience, metric="val_AP50"):
    """(best epoch, epoch training stops after) by the documented rule, from the validation values."""
    best_epoch, best, stale = None, None, 0
    for h in history:
        if metric not in h:
            continue
        if best is None or h[metric] > best:
            best_epoch, best, stale = h["epoch"], h[metric], 0
        else:
            stale += 1
        if patience and stale >= patience:
            return best_epoch, h["epoch"]
    return best_epoch, history[-1]["epoch"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):
    """A run never stopped from outside: patience 2 of 8 epochs."""
    folder = tmp_path_factory.mktemp("straight")
    result, weights = run(shapes, folder, patience=2)
    return folder, result, weights


def test_best_epoch_is_kept_and_patience_stops(straight):
    tmp_path, result, weights = straight
    history = result["history"]
    best_epoch, stop_epoch = expected(history, 2)
    assert len(history) == stop_epoch and result["stopped_early"] == (stop_epoch < 8)
    assert result["stopped_by"] == ("patience" if stop_epoch < 8 else None)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result["best"]["epoch"] == best_epoch
    assert best["best"]["value"] == history[best_epoch - 1]["val_AP50"] and "optimizer" not in best
    assert same(best["model"], weights[best_epoch])
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == stop_epoch and last["best"] == result["best"]
    assert last["best"]["stale"] == stop_epoch - best_epoch     # one validation per epoch


def test_a_tie_keeps_the_earlier_epoch(shapes, tmp_path):
    """lr 1e-9: the weights hardly move, so every validation gives the same value."""
    result, _ = run(shapes, tmp_path, epochs=5, patience=2, lr=1e-9)
    values = [h["val_AP50"] for h in result["history"]]
    assert len(set(values)) == 1, values
    assert result["best"]["epoch"] == 1 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert len(values) == 3 and result["stopped_by"] == "patience"


def test_without_validation_best_holds_the_last_epoch_and_says_so(shapes, tmp_path):
    result, weights = run(shapes, tmp_path, epochs=2, patience=0, eval_every=0)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["epoch"] is None and best["best"]["value"] is None and best["epoch"] == 2
    assert same(best["model"], weights[2]) and not result["stopped_early"]
    assert "val_AP50" not in result["history"][-1]


def test_patience_needs_validation():
    assert TrainConfig.check({"patience": 3}) == [
        "patience: counts validations, so it needs eval_every > 0 (got patience 3 with eval_every 0)"]
    assert TrainConfig.check({"patience": 3, "eval_every": 2}) == []
    assert TrainConfig.check({"best_metric": "mAP"})
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=1)


@pytest.mark.slow
def test_resumed_run_makes_the_same_decisions(shapes, straight, tmp_path):
    folder, straight, _ = straight
    best_epoch, stop_epoch = straight["best"]["epoch"], len(straight["history"])
    # stop where the best is behind and the patience count has begun, if the run has such an epoch
    k = next((e for e in range(best_epoch + 1, stop_epoch)), max(1, stop_epoch - 1))
    run(shapes, tmp_path, patience=2, callbacks=[StopAfter(k)])
    resumed, _ = run(shapes, tmp_path, patience=2, resume=True)
    assert resumed["best"] == straight["best"] and len(resumed["history"]) == stop_epoch
    assert resumed["stopped_by"] == straight["stopped_by"]
    a, b = load_checkpoint(folder / "best.pt"), load_checkpoint(tmp_path / "best.pt")
    assert a["epoch"] == b["epoch"] and same(a["model"], b["model"])
    if straight["stopped_early"]:   # resuming a run patience stopped trains no further
        again, _ = run(shapes, tmp_path, patience=2, resume=True)
        assert again["stopped_by"] == "patience" and len(again["history"]) == stop_epoch


@pytest.mark.slow
def test_best_file_rebuilt_after_a_kill_between_the_two_writes(shapes, straight, tmp_path):
    """The last checkpoint is written first: killed before the best one, the best epoch is the last one, whose
    weights the last checkpoint holds. Any other mismatch is refused rather than resumed wrongly."""
    folder, straight, _ = straight
    improved, best = [], None
    for h in straight["history"]:
        if best is None or h["val_AP50"] > best:
            improved, best = [*improved, h["epoch"]], h["val_AP50"]
    if len(improved) < 2:
        pytest.skip(f"validation improved only at epochs {improved} on this CPU")
    run(shapes, tmp_path, patience=2, callbacks=[StopAfter(improved[0])])
    older = (tmp_path / "best.pt").read_bytes()
    run(shapes, tmp_path, patience=2, callbacks=[StopAfter(improved[-1])], resume=True)   # the run's best epoch
    (tmp_path / "best.pt").write_bytes(older)            # as if killed before that epoch's best was written
    resumed, _ = run(shapes, tmp_path, patience=2, resume=True)   # no later epoch improves: only a rebuild fixes it
    assert resumed["best"] == straight["best"]
    assert same(load_checkpoint(tmp_path / "best.pt")["model"], load_checkpoint(folder / "best.pt")["model"])
    if straight["best"]["epoch"] != len(straight["history"]):   # a best before the last epoch cannot be rebuilt
        (tmp_path / "best.pt").write_bytes(older)
        with pytest.raises(ValueError, match="cannot be rebuilt"):
            run(shapes, tmp_path, patience=2, resume=True)

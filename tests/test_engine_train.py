"""The training loop: seeded, exactly resumable, atomic checkpoints, NaN handling, callbacks, schedule."""
import math

import pytest
import torch
from torch import nn

from fcos import FCOS
from fcos.callbacks import Callback, StopTraining
from fcos.checkpoint import load_checkpoint, load_model, save_checkpoint
from fcos.data import VOCDataset, build_loader, generate_shapes
from fcos.engine import TrainConfig, _cpu_has_bf16, fit, resolve_amp
from fcos.optim import build_optimizer, lr_factor


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), seed=1, num_trainval=6, num_test=2, image_size=96)


def tiny_model():
    return FCOS(num_classes=6, fpn_channels=16, head_convs=1, min_size=(64, 80), max_size=120, gn_groups=8)


def run(shapes, path, epochs=3, callbacks=(), resume=False, seed=0, sync_every=0, amp="none"):
    torch.manual_seed(123)   # model init, independent of the training seed
    model = tiny_model()
    ds = VOCDataset(shapes, "trainval", train=True)
    loader = build_loader(ds, 4, shuffle=True, seed=seed)
    cfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=0.01, warmup_epochs=1, seed=seed, sync_every=sync_every,
                      amp=amp)
    result = fit(model, loader, cfg, checkpoint_path=path, classes=ds.classes, callbacks=callbacks, resume=resume)
    return model, result


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


class StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, state, summary):
        if state.epoch + 1 == self.epochs:
            raise StopTraining


def test_same_seed_gives_identical_weights(shapes, tmp_path):
    a, _ = run(shapes, tmp_path / "a.pt", epochs=2)
    b, _ = run(shapes, tmp_path / "b.pt", epochs=2)
    c, _ = run(shapes, tmp_path / "c.pt", epochs=2, seed=1)
    assert same_weights(a, b) and not same_weights(a, c)


def test_resume_after_epoch_k_ends_bit_identical(shapes, tmp_path):
    straight, _ = run(shapes, tmp_path / "straight.pt", epochs=3)
    _, first = run(shapes, tmp_path / "resumed.pt", epochs=3, callbacks=[StopAfter(1)])
    assert first["stopped_early"] and load_checkpoint(tmp_path / "resumed.pt")["epoch"] == 1
    resumed, second = run(shapes, tmp_path / "resumed.pt", epochs=3, resume=True)
    assert second["epochs"] == 3 and len(second["history"]) == 3
    assert same_weights(straight, resumed)
    ck = torch.load(tmp_path / "resumed.pt", weights_only=True)   # the contract: weights_only loads it
    assert ck["epoch"] == 3 and ck["classes"][0] == "circle" and "optimizer" in ck and "scheduler" in ck
    model, classes = load_model(tmp_path / "resumed.pt")
    assert same_weights(model, resumed) and not model.training and len(classes) == 6


class Steps(Callback):
    def __init__(self):
        self.rows = []

    def on_step_end(self, state, losses, lr):
        self.rows.append((state.epoch, state.step, state.global_step, lr, losses))


def test_losses_read_in_batches_reach_the_callbacks_unchanged(shapes, tmp_path):
    """CUDA's default: the host reads the losses every few steps; the callbacks see what a read per step sees."""
    every_step, batched = Steps(), Steps()
    a, _ = run(shapes, tmp_path / "a.pt", epochs=2, callbacks=[every_step])
    b, result = run(shapes, tmp_path / "b.pt", epochs=2, callbacks=[batched], sync_every=4)
    assert len(every_step.rows) == result["steps"] == 4 and every_step.rows == batched.rows
    assert [r[2] for r in batched.rows] == [1, 2, 3, 4] and all(math.isfinite(r[4]["final_loss"]) for r in batched.rows)
    assert same_weights(a, b)


def test_amp_auto_trains_in_what_this_cpu_runs_natively_and_says_which(shapes, tmp_path):
    auto, plain = Steps(), Steps()
    _, result = run(shapes, tmp_path / "auto.pt", epochs=1, callbacks=[auto], amp="auto")
    _, reference = run(shapes, tmp_path / "none.pt", epochs=1, callbacks=[plain])
    wanted = "bf16" if _cpu_has_bf16() else "none"   # AVX512-BF16 or AMX: bf16; else float32
    assert result["amp"] == wanted == resolve_amp("auto", torch.device("cpu")) and reference["amp"] == "none"
    assert len(auto.rows) == 2 and all(math.isfinite(r[4]["final_loss"]) for r in auto.rows)
    same = [r[4] for r in auto.rows] == [r[4] for r in plain.rows]
    assert same == (wanted == "none")   # bf16 autocast really ran: other losses than float32's
    assert resolve_amp("fp16", torch.device("cpu")) == "none" and TrainConfig.check({"amp": "fp8"})   # ran float32


def test_killed_checkpoint_write_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "ck.pt"
    state = {"model": {"w": torch.ones(3)}, "model_config": {}, "classes": ["a"], "epoch": 1, "global_step": 1}
    save_checkpoint(path, state)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(OSError, match="the previous checkpoint is kept"):
        save_checkpoint(path, {**state, "epoch": 2, "w": Boom()})
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="ck.pt: not a readable fcos-exp checkpoint"):
        load_checkpoint(path)


class NaNAt(nn.Module):
    """Follows the loss-dict contract; the loss turns NaN at one step."""

    def __init__(self, bad_step):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls, self.bad_step = 0, bad_step
        self.config = type("C", (), {"to_dict": lambda self: {}})()

    def forward(self, images, targets):
        self.calls += 1
        loss = (self.w - 2) ** 2 * (float("nan") if self.calls == self.bad_step else 1.0)
        return {"final_loss": loss.sum()}


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, state):
        self.events.append("start")

    def on_epoch_end(self, state, summary):
        self.events.append(f"epoch{state.epoch + 1}")

    def on_train_end(self, state, error):
        self.events.append(f"end:{type(error).__name__ if error else None}")


def fake_loader(n=4):
    data = [(torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})] * n
    return build_loader(data, 1)


@pytest.mark.parametrize("sync_every", [0, 3])   # 3: found at the read after it, still named exactly
def test_nan_loss_stops_naming_epoch_and_step_and_end_hook_still_runs(tmp_path, sync_every):
    rec, steps = Recorder(), Steps()
    with pytest.raises(FloatingPointError, match="epoch 2, step 3"):
        fit(NaNAt(bad_step=7), fake_loader(), TrainConfig(epochs=3, lr=0.1, sync_every=sync_every),
            checkpoint_path=tmp_path / "c.pt", classes=[], callbacks=[rec, steps])
    assert rec.events == ["start", "epoch1", "end:FloatingPointError"]
    assert [r[2] for r in steps.rows] == [1, 2, 3, 4, 5, 6]   # the steps before the NaN one, no later


def test_nan_loss_can_skip_the_step(tmp_path):
    model = NaNAt(bad_step=2)
    result = fit(model, fake_loader(), TrainConfig(epochs=1, lr=0.1, nonfinite="skip"),
                 checkpoint_path=tmp_path / "c.pt", classes=[])
    assert result["history"][0]["skipped_steps"] == 1 and math.isfinite(model.w.item())


def test_schedule_warmup_then_cosine_and_multistep():
    assert lr_factor(0, 100, 10, "cosine", [], 0.1) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, "cosine", [], 0.1) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10, 100, 10, "cosine", [], 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", [], 0.1) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", [], 0.1) == pytest.approx(0.0)
    assert lr_factor(70, 100, 0, "multistep", [0.67, 0.89], 0.1) == pytest.approx(0.1)
    assert lr_factor(90, 100, 0, "multistep", [0.67, 0.89], 0.1) == pytest.approx(0.01)


def test_no_weight_decay_on_norm_and_bias():
    model = tiny_model()
    opt = build_optimizer(model, "sgd", 0.01, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])

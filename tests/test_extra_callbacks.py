"""FCOS_EXP_CALLBACKS: callbacks of one's own reach training without editing the project (the tests' pause
uses it); unset it adds nothing, and a wrong name is one line."""
import pytest
from conftest import ROOT

from pipeline.errors import UserError
from pipeline.extra_callbacks import ENV, extra_callbacks


def test_unset_adds_nothing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert extra_callbacks() == []


def test_named_factories_give_their_callbacks(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("FCOS_EXP_TEST_PAUSE", f"3:{tmp_path / 'go'}")
    monkeypatch.setenv(ENV, "pause_callback:from_env, pause_callback:from_env")
    import pause_callback
    found = extra_callbacks()
    assert [type(c) for c in found] == [pause_callback.PauseAtStep] * 2 and found[0].step == 3


@pytest.mark.parametrize("spec, says", [("no_such_module:f", "not an importable module:factory"),
                                        ("pause_callback:missing", "not an importable module:factory"),
                                        ("os:getcwd", "not fcos.callbacks.Callback")])
def test_a_wrong_name_is_one_line(monkeypatch, spec, says):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv(ENV, spec)
    with pytest.raises(UserError, match=says) as e:
        extra_callbacks()
    assert "\n" not in str(e.value) and ENV in str(e.value)


@pytest.mark.parametrize("source, spec, says", [
    ("def f(:\n", "m:f", "importing m raised SyntaxError: invalid syntax"),
    ("raise RuntimeError('no GPU here')\n", "m:f", "importing m raised RuntimeError: no GPU here"),
    ("f = 5\n", "m:f", "calling m:f raised TypeError: 'int' object is not callable"),
    ("def f(x):\n    return x\n", "m:f", "calling m:f raised TypeError: f() missing 1 required positional argument"),
    ("def f():\n    raise ValueError('bad setting')\n", "m:f", "calling m:f raised ValueError: bad setting")],
    ids=["syntax-error", "import-raises", "not-callable", "wants-an-argument", "factory-raises"])
def test_a_failing_module_or_factory_of_the_user_is_one_line_naming_it(monkeypatch, tmp_path, source, spec, says):
    """Errors of the user's own module or factory were reported as an internal error, a bug in fcos-exp."""
    (tmp_path / "m.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ENV, spec)
    monkeypatch.delitem(__import__("sys").modules, "m", raising=False)
    with pytest.raises(UserError) as e:
        extra_callbacks()
    assert str(e.value).startswith(f"{ENV}: {says}") and "\n" not in str(e.value)

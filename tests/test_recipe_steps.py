"""The recipe's resumable steps: a finished step is reused only when its settings match."""

from train.builtin.recipe import _fingerprint, _step


def test_step_reused_with_same_settings_and_redone_when_they_change(tmp_path):
    calls = []

    def make(path):
        calls.append(path.name)
        (path / "out.txt").write_text(str(len(calls)))
        return {"n": len(calls)}

    log: dict = {}
    first = _step("a", tmp_path / "a", log, make, _fingerprint({"steps": 1}))
    assert calls == ["a"] and log["a"]["n"] == 1 and not log["a"].get("skipped")
    assert _step("a", tmp_path / "a", log, make, first) == first
    assert calls == ["a"] and log["a"]["skipped"] and log["a"]["n"] == 1
    changed = _fingerprint({"steps": 2})
    assert changed != first
    _step("a", tmp_path / "a", log, make, changed)
    assert calls == ["a", "a"] and (tmp_path / "a" / "out.txt").read_text() == "2"
    # a downstream step's fingerprint carries its inputs', so a changed upstream redoes it too
    assert _fingerprint(first, {"lr": 1}) != _fingerprint(changed, {"lr": 1})


def test_unfinished_step_is_redone_from_scratch(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "half-written.bin").write_text("x")  # killed before it marked itself done
    log: dict = {}
    _step("a", tmp_path / "a", log, lambda p: {}, _fingerprint(1))
    assert not (tmp_path / "a" / "half-written.bin").exists()
    assert (tmp_path / "a" / ".done").is_file()

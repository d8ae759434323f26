"""Where the course's relative paths point: $MTLORA_LITE_HOME, else the checkout, else cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlora_lite.course.notebook import HOME_ENV_VAR, course_path, course_root


def _checkout(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "mtlora-lite"\n')
    return root


def test_a_checkout_is_found_from_any_folder_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOME_ENV_VAR, raising=False)
    root = _checkout(tmp_path / "repo")
    assert course_root(root / "notebooks") == root.resolve()
    monkeypatch.chdir(root / "notebooks")
    assert course_path("outputs/cache") == root.resolve() / "outputs" / "cache"
    assert course_path(tmp_path / "abs") == tmp_path / "abs" and course_path(None) is None


def test_other_projects_and_plain_folders_use_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOME_ENV_VAR, raising=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert course_root(other) == other.resolve()  # e.g. /content on Colab


def test_the_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _checkout(tmp_path / "repo")
    monkeypatch.setenv(HOME_ENV_VAR, str(tmp_path / "elsewhere"))
    assert course_root(root) == (tmp_path / "elsewhere").resolve()
    assert course_path("outputs") == (tmp_path / "elsewhere").resolve() / "outputs"

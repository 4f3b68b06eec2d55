from __future__ import annotations

from pathlib import Path

import pytest

from ytdnn.config import ConfigError, JobConfig


class Section(JobConfig):
    lr: float = 1e-3
    hidden: list[int] = [256, 128]


class Job(JobConfig):
    name: str = "default"
    section: Section = Section()


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "from-file"\n[section]\nlr = 0.5\n')
    job = Job.load(path, ["section.hidden=[64, 32]", "name=cli"])
    assert job.name == "cli" and job.section.lr == 0.5 and job.section.hidden == [64, 32]


def test_unknown_key_and_bad_type_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.lrr"):
        Job.load(overrides=["section.lrr=1"])
    with pytest.raises(ConfigError, match="section.lr"):
        Job.load(overrides=["section.lr=fast"])
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("name = ")
        Job.load(tmp_path / "bad.toml")


def test_save_and_read_roundtrip(tmp_path: Path) -> None:
    job = Job.load(overrides={"section.lr": 0.25})
    job.save(tmp_path / "config.json")
    assert Job.read(tmp_path / "config.json") == job


def test_a_whole_config_check_reads_without_an_empty_field_path() -> None:
    from pydantic import model_validator

    from ytdnn.config import ConfigError, JobConfig

    class Window(JobConfig):
        start: int = 0
        end: int = 1

        @model_validator(mode="after")
        def _ordered(self) -> "Window":
            if self.end <= self.start:
                raise ValueError("end must come after start")
            return self

    with pytest.raises(ConfigError) as caught:
        Window.load(overrides=["start=5"])
    assert str(caught.value) == "overrides: end must come after start"
    with pytest.raises(ConfigError, match=r"^overrides: start: Input should be a valid integer"):
        Window.load(overrides=["start=soon"])

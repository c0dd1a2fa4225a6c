import pytest

from rl.cli import main as cli_main
from envs.source import check_sources
from rl.config import ConfigError, load_config


@pytest.fixture
def configs(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 1.0e-5\n  steps: 7\nrollout:\n  num_workers: 1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 3\n")
    return tmp_path


def test_base_merge_and_dotted_overrides(configs):
    config = load_config(configs / "child.yaml", ["rollout.num_workers=2", "train.lr=2e-6", "env.sources=[{type: arithmetic}]",
                                                  "env.sources.0.distributions=[add_3d]"])
    assert config.train.steps == 3  # child wins over base
    assert config.train.lr == 2e-6  # override wins over both
    assert config.rollout.num_workers == 2
    assert config.env.sources[0].distributions == ["add_3d"]
    with pytest.raises(ConfigError, match="is a list of 1; use an index below 1"):
        load_config(configs / "child.yaml", ["env.sources=[{type: arithmetic}]", "env.sources.3.few_shot=1"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "unknown key `train.lrr`: did you mean `train.lr`?"),
        ("trian.steps=1", "unknown key `trian`: did you mean `train`?"),
        ("rollout.num_wrkers=1", "did you mean `rollout.num_workers`?"),
    ],
)
def test_unknown_key_names_key_and_closest(configs, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(configs / "child.yaml", [override])
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=fast", "`train.lr` must be a number, got 'fast'"),
        ("train.steps=2.5", "`train.steps` must be an integer"),
        ("rollout.enforce_eager=maybe", "`rollout.enforce_eager` must be true or false"),
        ("rollout.dtype=fp8", "`rollout.dtype` must be one of"),
        ("train.mini_batches=5", "must divide the batch"),
    ],
)
def test_wrong_type_names_path_and_expected_type(configs, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(configs / "child.yaml", [override])
    assert expected in str(err.value)


def test_base_loop_and_bad_yaml_are_clear(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(tmp_path / "ok.yaml", ["train.lr"])


def test_config_show_prints_resolved_yaml(configs, capsys):
    assert cli_main(["config", "show", str(configs / "child.yaml"), "train.lr=3e-6"]) == 0
    out = capsys.readouterr().out
    assert "lr: 3.0e-06" in out and "steps: 3" in out


def test_every_shipped_config_validates():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    for path in files:
        check_sources(load_config(path))  # names parse, data files exist


def test_train_rejects_missing_model_before_starting_anything(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"model: {tmp_path / 'no-such-model'}\nrun: {{output_dir: {tmp_path / 'runs'}}}\n")
    assert cli_main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_rejects_unknown_reward_before_loading_model(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("rewards: [{name: boxed_answr}]\nmodel: /nonexistent\n")
    assert cli_main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "did you mean 'boxed_answer'" in capsys.readouterr().err


def test_device_settings_default_to_auto_and_memory_budgets_exclude_each_other(configs):
    config = load_config(configs / "child.yaml")
    assert (config.train.dtype, config.rollout.dtype, config.rollout.enforce_eager) == ("auto", "auto", None)
    assert (config.rollout.gpu_memory_utilization, config.rollout.gpu_memory_gib, config.rollout.share_gpu_with_learner) == (None, None, None)
    with pytest.raises(ConfigError, match="set rollout.gpu_memory_utilization or rollout.gpu_memory_gib, not both"):
        load_config(configs / "child.yaml", ["rollout.gpu_memory_utilization=0.5", "rollout.gpu_memory_gib=10"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(configs / "child.yaml", ["rollout.gpu_memory_utilization=1.5"])

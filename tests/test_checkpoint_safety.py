"""Resume with real DeepSpeed engines on the tiny model: the manifest is checked, files are read weights-only,
and a planted pickle payload never runs, whether the launcher's scan or the learner's load meets it."""

import os
import shutil

import pytest
import torch

from learner.batch import TrainSample
from learner.checkpoint import (
    CheckpointError,
    check_intact,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    set_aside_after,
)
from learner.engine import build_policy_engine, iter_publish_tensors
from learner.safe_load import UnsafeCheckpointError, safe_checkpoint_loads, safe_torch_load, unsafe_globals
from tests.test_learner_engine import grpo_step, two_threads  # noqa: F401  (module-wide: 2 torch threads)
from rl.checkpoint_manifest import MANIFEST_FILE, ManifestError, verify_manifest, write_manifest


class Payload:
    """Unpickling this runs code: it creates `marker`. Resume must never do that."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def make_engine(model_dir, zero_stage):
    return build_policy_engine(
        str(model_dir), lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10, zero_stage=zero_stage,
        micro_batch_size=2, grad_accum_steps=2, grad_clip=0.0, dtype="float32", seed=0,
    )  # fmt: skip


def samples() -> list[TrainSample]:
    g = torch.Generator().manual_seed(0)
    return [TrainSample(torch.randint(100, 5000, (5,), generator=g).tolist(), torch.randint(100, 5000, (4,), generator=g).tolist(),
                        [-3.0] * 4, advantage) for advantage in (1.0, -0.5, 0.8, -1.2)]


def weights(engine) -> dict[str, torch.Tensor]:
    return {n: t.clone() for bucket in iter_publish_tensors(engine, torch.float32, 2**22) for n, t in bucket}


def trained_checkpoint(model_dir, run_dir, step=1, zero_stage=1):
    engine = make_engine(model_dir, zero_stage)
    grpo_step(engine, samples(), clip_eps=0.2, kl_coef=0.0, temperature=1.0)  # fills the optimizer's state
    path = save_checkpoint(engine, run_dir, step, {"policy_version": step}, str(model_dir), keep_last=3)
    return engine, path


def plant(path, name, marker):
    """Put a payload into the real file `name` and rewrite the manifest to match, as a tamperer would."""
    state = safe_torch_load(path / name)
    state["planted"] = Payload(marker)
    torch.save(state, path / name)
    (path / MANIFEST_FILE).unlink()
    write_manifest(path)
    verify_manifest(path)  # the manifest alone cannot tell


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    """A run folder with checkpoints of steps 1 and 2 (ZeRO 1), for the tests that only read or copy them."""
    run_dir = tmp_path_factory.mktemp("run")
    engine, _ = trained_checkpoint(tiny_model_dir, run_dir, step=1)
    save_checkpoint(engine, run_dir, 2, {"policy_version": 2}, str(tiny_model_dir), keep_last=3)
    return run_dir


def copy_run(saved, folder):
    shutil.copytree(saved, folder / "run")
    return folder / "run", folder / "run" / "checkpoints" / "step-000002"


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_resume_loads_weights_only_and_continues_identically(tiny_model_dir, tmp_path, zero_stage):
    engine, path = trained_checkpoint(tiny_model_dir, tmp_path, zero_stage=zero_stage)
    check_intact(path)  # every DeepSpeed file of this stage holds only tensors and allow-listed types
    fresh = make_engine(tiny_model_dir, zero_stage)
    assert load_checkpoint(fresh, path)["policy_version"] == 1
    expected = weights(engine)
    for name, tensor in weights(fresh).items():
        assert torch.equal(tensor, expected[name]), name
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the guard is scoped to the load
    # the optimizer state came back too: the next step is the same
    a = grpo_step(engine, samples(), clip_eps=0.2, kl_coef=0.0, temperature=1.0)["loss/total"]
    b = grpo_step(fresh, samples(), clip_eps=0.2, kl_coef=0.0, temperature=1.0)["loss/total"]
    assert a == pytest.approx(b, rel=1e-6)
    after_a, after_b = weights(engine), weights(fresh)
    for name in after_a:
        torch.testing.assert_close(after_b[name], after_a[name], rtol=1e-6, atol=1e-7, msg=name)


def test_one_byte_changed_in_any_file_is_refused_naming_it_and_the_intact_one(saved, tmp_path):
    run_dir, path = copy_run(saved, tmp_path)
    names = sorted(verify_manifest(path))
    assert {"deepspeed/mp_rank_00_model_states.pt", "policy/model.safetensors", "rng.safetensors", "trainer_state.json"} <= set(names)
    for name in names:
        original = (path / name).read_bytes()
        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0x01
        (path / name).write_bytes(bytes(changed))
        with pytest.raises(CheckpointError) as caught:
            resume_checkpoint(run_dir)
        message = str(caught.value)
        assert "\n" not in message and str(path / name) in message, message
        assert f"step-000001: rl train --resume {run_dir} --step 1" in message, message
        (path / name).write_bytes(original)
    assert resume_checkpoint(run_dir) == path
    assert resume_checkpoint(run_dir, 1) == run_dir / "checkpoints" / "step-000001"


def test_a_checkpoint_without_manifest_is_refused(saved, tmp_path):
    run_dir, path = copy_run(saved, tmp_path)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"manifest.json is missing \(a checkpoint written by an older version.*--step 1"):
        resume_checkpoint(run_dir)


def torch_files(path) -> list[str]:
    """DeepSpeed's pickled files in a checkpoint: the model states, and with ZeRO the optimizer partitions."""
    return sorted(name for name in verify_manifest(path) if name.endswith(".pt"))


def test_a_planted_payload_is_refused_by_the_scan_and_never_runs(saved, tmp_path):
    names = torch_files(saved / "checkpoints" / "step-000002")
    assert "deepspeed/mp_rank_00_model_states.pt" in names
    for index, name in enumerate(names):
        run_dir, path = copy_run(saved, tmp_path / str(index))
        marker = tmp_path / f"marker-{index}"
        plant(path, name, marker)
        with pytest.raises(CheckpointError, match=r"holds builtins.exec, which is not tensor or optimizer state") as caught:
            resume_checkpoint(run_dir)
        assert str(path / name) in str(caught.value) and "--step 1" in str(caught.value)
        assert not marker.exists()


def test_a_planted_payload_is_refused_by_the_learners_load_and_never_runs(saved, tiny_model_dir, tmp_path):
    """What the learner does if a file changed after `rl train --resume` checked it (or nothing checked it)."""
    for index, name in enumerate(torch_files(saved / "checkpoints" / "step-000002")):
        _, path = copy_run(saved, tmp_path / str(index))
        marker = tmp_path / f"marker-{index}"
        plant(path, name, marker)
        with pytest.raises(UnsafeCheckpointError, match=r"holds (builtins\.)?exec, which is not tensor"):
            load_checkpoint(make_engine(tiny_model_dir, 1), path)
        assert not marker.exists(), name


def test_the_learner_hashes_what_it_loads(saved, tiny_model_dir, tmp_path):
    _, path = copy_run(saved, tmp_path)
    name = max(torch_files(path), key=lambda n: (path / n).stat().st_size)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the hash sees it
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match its sha256") as caught:
        load_checkpoint(make_engine(tiny_model_dir, 1), path)
    assert caught.value.file == name


def test_weights_only_is_forced_on_every_torch_load_inside_a_resume(saved, tmp_path):
    """DeepSpeed also calls torch.load(weights_only=False) outside its checkpoint engine (universal and
    MoE paths): inside the load's scope those are weights-only too."""
    _, path = copy_run(saved, tmp_path)
    marker = tmp_path / "marker"
    torch.save({"x": torch.ones(2), "y": Payload(marker)}, tmp_path / "planted.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"holds (builtins\.)?exec"):
        with safe_checkpoint_loads([], path, verify_manifest(path)):
            torch.load(tmp_path / "planted.pt", weights_only=False)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"holds (builtins\.)?exec"):
        safe_torch_load(tmp_path / "planted.pt")
    assert not marker.exists()
    # the same in torch's older, non-zip format: the scan cannot read it, so it refuses it; loading is weights-only too
    torch.save({"y": Payload(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="is not a torch checkpoint file"):
        unsafe_globals(tmp_path / "legacy.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"holds (builtins\.)?exec"):
        safe_torch_load(tmp_path / "legacy.pt")
    assert not marker.exists()


def test_resuming_an_older_step_sets_the_later_ones_aside(saved, tmp_path):
    run_dir, path = copy_run(saved, tmp_path)
    (moved,) = set_aside_after(run_dir, 1)
    assert moved.name == "step-000002" and moved.parent.name.startswith("set-aside-") and not path.exists()
    assert resume_checkpoint(run_dir) == run_dir / "checkpoints" / "step-000001"
    assert set_aside_after(run_dir, 1) == []


def test_the_allow_list_names_what_pickle_writes():
    from learner.safe_load import ALLOWED_NAMES, allowed_globals

    assert [f"{obj.__module__}.{obj.__qualname__}" for obj in allowed_globals()] == list(ALLOWED_NAMES)


def test_step_needs_resume_and_resume_needs_a_run_folder(tmp_path, capsys):
    from rl.cli import main

    assert main(["train", "configs/quickstart.yaml", "--step", "1"]) == 2
    assert "--step K needs --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--step", "1"]) == 2
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err

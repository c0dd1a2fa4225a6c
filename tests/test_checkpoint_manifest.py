"""The checkpoint manifest on its own (no torch): written last, and every kind of difference refused, naming the file."""

import json

import pytest

from rl.checkpoint_manifest import (
    MANIFEST_FILE,
    CheckpointError,
    ManifestError,
    read_manifest,
    verified_bytes,
    verify_manifest,
    write_manifest,
)

FILES = {
    "deepspeed/mp_rank_00_model_states.pt": b"\x00model" * 100,
    "deepspeed/latest": b"deepspeed",
    "policy/model.safetensors": b"weights" * 50,
    "rng.safetensors": b"rng",
    "trainer_state.json": b'{"step": 2}',
}


@pytest.fixture
def folder(tmp_path):
    checkpoint = tmp_path / "step-000002"
    for name, data in FILES.items():
        (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / name).write_bytes(data)
    write_manifest(checkpoint)
    return checkpoint


def test_the_manifest_lists_every_file_with_its_size_and_sha256(folder):
    import hashlib

    entries = verify_manifest(folder)
    assert sorted(entries) == sorted(FILES)
    for name, data in FILES.items():
        assert entries[name].bytes == len(data) and entries[name].sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads((folder / MANIFEST_FILE).read_text())["format"] == 1


@pytest.mark.parametrize("name", sorted(FILES))
def test_one_byte_changed_in_any_file_is_refused_naming_it(folder, name):
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match its sha256") as caught:
        verify_manifest(folder)
    assert caught.value.file == name and str(folder / name) in str(caught.value)
    verify_manifest(folder, hash_files=False)  # same size: only the hash sees it
    with pytest.raises(ManifestError, match="does not match"):
        verified_bytes(folder, name, read_manifest(folder))


def test_a_truncated_file_is_refused_by_its_size_without_hashing(folder):
    (folder / "policy/model.safetensors").write_bytes(b"weights")
    with pytest.raises(ManifestError, match="has 7 bytes, manifest.json says 350") as caught:
        verify_manifest(folder, hash_files=False)
    assert caught.value.file == "policy/model.safetensors"


def test_a_missing_file_is_refused(folder):
    (folder / "rng.safetensors").unlink()
    with pytest.raises(ManifestError, match="is missing") as caught:
        verify_manifest(folder, hash_files=False)
    assert caught.value.file == "rng.safetensors"


def test_an_extra_file_is_refused(folder):
    (folder / "deepspeed" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"planted")
    with pytest.raises(ManifestError, match="not in manifest.json") as caught:
        verify_manifest(folder, hash_files=False)
    assert caught.value.file == "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def test_a_link_is_refused(folder, tmp_path):
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    (folder / "deepspeed" / "extra.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ManifestError, match="symbolic link"):
        verify_manifest(folder)


def test_no_manifest_an_older_checkpoint_is_refused_with_why(folder):
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(ManifestError, match="manifest.json is missing .*older version of rl.*cannot be verified"):
        verify_manifest(folder)


@pytest.mark.parametrize("text", ["not json", '{"format": 2, "algorithm": "sha256", "files": {}}', '{"format": 1, "algorithm": "sha256"}',
                                  '{"format": 1, "algorithm": "sha256", "files": {"../../x": {"bytes": 1, "sha256": "00"}}}'])
def test_a_malformed_manifest_is_refused(folder, text):
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(ManifestError, match="manifest.json (is not a valid manifest|lists '../../x')"):
        verify_manifest(folder)


def test_manifest_errors_are_checkpoint_errors(folder):
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError):  # what `rl train` and `rl export` report as a one-line error
        verify_manifest(folder)

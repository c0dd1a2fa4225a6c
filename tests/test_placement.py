"""The placement plan on made-up machines: every process's device, memory budget and environment."""

import pytest

from rl.config import load_config
from rl.placement import Gpu, Machine, PlanError, child_environment, make_plan


def gpus(count: int, gib: float = 80.0, capability=(9, 0), ids=None) -> Machine:
    listed = tuple(Gpu(i, "H100", gib, capability, visible_id=ids[i] if ids else "") for i in range(count))
    return Machine(gpus=listed, cores=tuple(range(16)), cpu_count=16, source="test")


def config(*overrides: str):
    return load_config("configs/quickstart.yaml", list(overrides))


def placements(plan):
    """(name, GPU, budget) of every process, learner ranks first."""
    return [(p.name, p.gpu, p.memory_fraction) for p in plan.learner + plan.workers]


def envs(plan):
    return {p.name: child_environment(plan, p) for p in plan.learner + plan.workers}


def test_one_gpu_one_worker_shares_it_and_leaves_the_learner_most_of_it():
    plan = make_plan(gpus(1), config("rollout.num_workers=1"))
    assert placements(plan) == [("learner rank 0", 0, None), ("local-0", 0, 0.4)]
    assert envs(plan) == {
        "learner rank 0": {"CUDA_VISIBLE_DEVICES": "0"},
        "local-0": {"CUDA_VISIBLE_DEVICES": "0", "RL_GPU_MEMORY_UTILIZATION": "0.4000"},
    }
    assert (plan.train_dtype, plan.rollout_dtype, plan.enforce_eager) == ("bfloat16", "bfloat16", False)
    assert any("single GPU" in note for note in plan.notes)
    # two workers split the same 0.40
    assert placements(make_plan(gpus(1), config("rollout.num_workers=2"))) == [
        ("learner rank 0", 0, None), ("local-0", 0, 0.2), ("local-1", 0, 0.2)]
    with pytest.raises(PlanError, match="rollout.share_gpu_with_learner=true"):
        make_plan(gpus(1), config("rollout.share_gpu_with_learner=false"))


def test_one_gpu_two_learner_ranks_is_refused_with_the_fix():
    with pytest.raises(PlanError, match=r"^learner.world_size=2 but this machine has 1 GPU: set learner.world_size=1 \(one rank"):
        make_plan(gpus(1), config("learner.world_size=2"))


def test_four_gpus_two_ranks_two_workers_each_on_its_own_gpu():
    plan = make_plan(gpus(4), config("learner.world_size=2", "rollout.num_workers=2"))
    assert placements(plan) == [("learner rank 0", 0, None), ("learner rank 1", 1, None), ("local-0", 2, 0.9), ("local-1", 3, 0.9)]
    assert plan.learner_include() == "localhost:0,1"
    assert envs(plan) == {
        "learner rank 0": {"CUDA_VISIBLE_DEVICES": None},  # DeepSpeed's launcher sets it from --include
        "learner rank 1": {"CUDA_VISIBLE_DEVICES": None},
        "local-0": {"CUDA_VISIBLE_DEVICES": "2", "RL_GPU_MEMORY_UTILIZATION": "0.9000"},
        "local-1": {"CUDA_VISIBLE_DEVICES": "3", "RL_GPU_MEMORY_UTILIZATION": "0.9000"},
    }
    assert not plan.notes


def test_eight_gpus_eight_ranks_and_only_remote_workers():
    plan = make_plan(gpus(8), config("learner.world_size=8", "rollout.num_workers=0", "transport.wait_for_workers=4"))
    assert placements(plan) == [(f"learner rank {r}", r, None) for r in range(8)]
    assert plan.learner_include() == "localhost:0,1,2,3,4,5,6,7"
    assert all(env == {"CUDA_VISIBLE_DEVICES": None} for env in envs(plan).values())
    assert plan.notes == ("no local rollout workers: the learner waits for 4 worker(s) from other machines "
                          "(rl rollout --connect ADDRESS, once per GPU there)",)


def test_two_gpus_one_rank_three_workers_share_the_second_gpu_with_split_budgets():
    plan = make_plan(gpus(2), config("rollout.num_workers=3"))
    assert placements(plan) == [("learner rank 0", 0, None), ("local-0", 1, 0.3), ("local-1", 1, 0.3), ("local-2", 1, 0.3)]
    assert envs(plan)["learner rank 0"] == {"CUDA_VISIBLE_DEVICES": "0"}
    assert all(envs(plan)[f"local-{i}"] == {"CUDA_VISIBLE_DEVICES": "1", "RL_GPU_MEMORY_UTILIZATION": "0.3000"} for i in range(3))


def test_pre_ampere_gpu_gets_fp16_rollouts_and_fp32_training():
    plan = make_plan(gpus(2, gib=16, capability=(7, 0)), config())
    assert placements(plan) == [("learner rank 0", 0, None), ("local-0", 1, 0.9)]
    assert (plan.train_dtype, plan.rollout_dtype, plan.enforce_eager) == ("float32", "float16", False)
    with pytest.raises(PlanError, match="rollout.dtype=bfloat16 needs compute capability 8.0.*set rollout.dtype=auto"):
        make_plan(gpus(2, capability=(7, 5)), config("rollout.dtype=bfloat16"))
    with pytest.raises(PlanError, match="train.dtype=bfloat16 needs compute capability 8.0.*set train.dtype=auto"):
        make_plan(gpus(2, capability=(7, 5)), config("train.dtype=bfloat16"))


def test_budgets_above_what_a_gpu_holds_are_refused_before_anything_starts():
    with pytest.raises(PlanError, match=r"0.5 x 3 engines on GPU 1 \(80 GiB\) is 1.50 of its memory, more than 0.95: "
                                        r"set rollout.gpu_memory_utilization=0.316 or less"):
        make_plan(gpus(2), config("rollout.num_workers=3", "rollout.gpu_memory_utilization=0.5"))
    with pytest.raises(PlanError, match="beside the learner"):  # 0.9 on the learner's only GPU
        make_plan(gpus(1), config("rollout.gpu_memory_utilization=0.9"))
    with pytest.raises(PlanError, match=r"rollout.gpu_memory_gib=50 x 2 engines .* set rollout.gpu_memory_gib=38 or less"):
        make_plan(gpus(2), config("rollout.num_workers=2", "rollout.gpu_memory_gib=50"))


def test_a_budget_in_gib_becomes_the_engines_share_of_its_gpu():
    plan = make_plan(gpus(3), config("rollout.num_workers=2", "rollout.gpu_memory_gib=20"))
    assert placements(plan) == [("learner rank 0", 0, None), ("local-0", 1, 0.25), ("local-1", 2, 0.25)]


def test_every_learner_gpu_is_taken_and_sharing_is_asked_for():
    with pytest.raises(PlanError, match="take all 2 GPUs and no GPU is left .* set learner.world_size=1 to free a GPU"):
        make_plan(gpus(2), config("learner.world_size=2"))
    plan = make_plan(gpus(2), config("learner.world_size=2", "rollout.num_workers=3", "rollout.share_gpu_with_learner=true"))
    assert placements(plan) == [("learner rank 0", 0, None), ("learner rank 1", 1, None),
                                ("local-0", 0, 0.2), ("local-1", 1, 0.4), ("local-2", 0, 0.2)]


def test_children_name_gpus_as_the_callers_cuda_visible_devices_does():
    plan = make_plan(gpus(4, ids=["2", "3", "5", "7"]), config("learner.world_size=2", "rollout.num_workers=2"))
    assert plan.learner_include() == "localhost:2,3"  # physical ids: DeepSpeed drops the CUDA_VISIBLE_DEVICES it gets
    assert [envs(plan)[f"local-{i}"]["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["5", "7"]
    one = make_plan(gpus(2, ids=["GPU-aaaa", "GPU-bbbb"]), config())
    assert envs(one)["learner rank 0"] == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa"}
    with pytest.raises(PlanError, match="by UUID but DeepSpeed's --include takes GPU numbers"):
        make_plan(gpus(3, ids=["GPU-a", "GPU-b", "GPU-c"]), config("learner.world_size=2"))


def test_workers_start_one_at_a_time_per_gpu(tmp_path):
    plan = make_plan(gpus(2), config("rollout.num_workers=2"))
    locks = [child_environment(plan, w, lock_dir=tmp_path)["RL_GPU_START_LOCK"] for w in plan.workers]
    assert locks == [str(tmp_path / "gpu-1.lock")] * 2


def test_cpu_plan_reports_pinning_and_threads_and_sets_no_environment():
    machine = Machine(cores=(0, 1, 2, 3), cpu_count=4, source="test")
    plan = make_plan(machine, config("rollout.num_workers=2"), worker_cores=((0, 1), (2, 3)))
    assert [(p.name, p.gpu, p.cores, p.threads) for p in plan.learner + plan.workers] == [
        ("learner rank 0", None, None, 4), ("local-0", None, (0, 1), 2), ("local-1", None, (2, 3), 2)]
    assert all(env == {} for env in envs(plan).values())
    assert (plan.train_dtype, plan.rollout_dtype, plan.enforce_eager) == ("float32", "float32", False)  # compiled
    two_ranks = make_plan(machine, config("learner.world_size=2", "rollout.cpu_threads='0-2'"), worker_cores=(None,))
    assert [(p.name, p.threads) for p in two_ranks.learner + two_ranks.workers] == [
        ("learner rank 0", 2), ("learner rank 1", 2), ("local-0", 3)]
    with pytest.raises(PlanError, match="train.dtype=bfloat16 needs a GPU"):
        make_plan(machine, config("train.dtype=bfloat16"))


def test_cpu_without_a_cpp_compiler_runs_vllm_eager_and_says_so():
    from rl.placement import NO_COMPILER_NOTE

    machine = Machine(cores=(0, 1), cpu_count=2, source="test", cpp_compiler=None)
    plan = make_plan(machine, config())
    assert plan.enforce_eager and NO_COMPILER_NOTE in plan.notes
    chosen = make_plan(machine, config("rollout.enforce_eager=true"))  # the user's choice: no note
    assert chosen.enforce_eager and NO_COMPILER_NOTE not in chosen.notes
    assert not make_plan(Machine(cores=(0, 1), cpu_count=2, source="test"), config()).enforce_eager


def test_cpp_compiler_is_found_on_path_through_cxx(monkeypatch):
    from rl import devices

    monkeypatch.setenv("CXX", "no-such-compiler-rl-test")
    assert devices.cpp_compiler() is None
    monkeypatch.setenv("CXX", "sh")  # any program on PATH
    assert devices.cpp_compiler() is not None


@pytest.mark.parametrize("fake, overrides", [
    ("8x80", ["learner.world_size=8", "train.zero_stage=3", "rollout.num_workers=0", "transport.wait_for_workers=4",
              "transport.host=0.0.0.0", "transport.port=5555", "transport.allow_insecure_network=true"]),
    ("4x80", ["learner.world_size=2", "rollout.num_workers=2"]),
])
def test_the_readme_shows_what_the_plan_prints(fake, overrides):
    """The README's --plan blocks were printed on a 2-core machine; the same machine gives the same text today."""
    from pathlib import Path

    from rl.devices import parse_fake_gpus
    from rl.plan_report import format_plan

    cfg = config(*overrides)
    machine = Machine(gpus=tuple(parse_fake_gpus(fake)), cores=(0, 1), cpu_count=2, source="RL_FAKE_GPUS")
    text = format_plan(make_plan(machine, cfg), cfg)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"$ RL_FAKE_GPUS={fake} rl train" in readme and "\n" + text + "\n```" in readme

"""bench/label_free.py's report on small fake run folders: held-out and training curves, the tables,
the plot, the last JSON line by hand; its arms' overrides make valid configs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench.support.label_free_report as report  # noqa: E402
from bench.support.curriculum_report import Budget  # noqa: E402
from bench.support.grid import selected_slots  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_label_free", BENCH / "label_free.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

MIXTURE = ["add_1d", "add_2d"]
BUDGET = Budget(steps=4, eval_every=2, test_size=32, mixture=tuple(MIXTURE))


def eval_rows(accuracy: dict[str, float], length: float) -> dict:
    rows = {d: {"accuracy": a, "response_len_mean": length} for d, a in accuracy.items()}
    rows["overall"] = {"accuracy": sum(accuracy.values()) / len(accuracy), "response_len_mean": length}
    return {"distributions": rows}


def fake_run(runs_dir: Path, arm: str, seed: int, accuracy: dict[int, dict[str, float]], lengths: dict[int, float],
             train_lengths: list[float]) -> Path:
    """A finished run folder as `rl train` leaves it (4 steps, eval every 2)."""
    run = runs_dir / f"{arm}-seed{seed}" / f"{arm}-s{seed}-20261201-100000"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    config = {"train": {"steps": 4}, "eval": {"every": 2}, "env": {"test_size": 32, "sources": [{"distributions": MIXTURE}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "eval_before.json").write_text(json.dumps(eval_rows(accuracy[0], lengths[0])))
    (run / "eval_after.json").write_text(json.dumps(eval_rows(accuracy[4], lengths[4])))
    lines = []
    for step in range(1, 5):
        line = {"step": step, "rollout/response_len_mean": train_lengths[step - 1], "rollout/reward_mean": 0.1 * step,
                "rollout/accuracy": None}
        if step == 2:
            flat = eval_rows(accuracy[2], lengths[2])["distributions"]
            line.update({f"eval/{n}/{k}": v for n, row in flat.items() for k, v in row.items()})
        lines.append(json.dumps(line))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run.parent / "bench_time.json").write_text(json.dumps({"seconds": 120.0}))
    return run


ACC = {0: {"add_1d": 0.25, "add_2d": 0.0}, 2: {"add_1d": 0.5, "add_2d": 0.25}, 4: {"add_1d": 0.75, "add_2d": 0.25}}


def test_curves_tables_plot_and_headline_by_hand(tmp_path, capsys):
    fake_run(tmp_path, "correctness", 0, ACC, {0: 10, 2: 12, 4: 14}, [20, 22, 24, 26])
    # overall at step 4: (0.75 + 0.25) / 2 = 0.5 for correctness; format_length seeds: 0.25 and 0.375 -> mean 0.3125
    fake_run(tmp_path, "format_length", 0, {**ACC, 4: {"add_1d": 0.5, "add_2d": 0.0}}, {0: 10, 2: 30, 4: 32}, [28, 30, 32, 34])
    fake_run(tmp_path, "format_length", 1, {**ACC, 4: {"add_1d": 0.5, "add_2d": 0.25}}, {0: 10, 2: 34, 4: 36}, [30, 32, 34, 36])
    run = bench.finished_run(tmp_path / "correctness-seed0", BUDGET)
    read = report.read_run("correctness", 0, run, MIXTURE, 4)
    assert read.accuracy[0] == {"add_1d": 0.25, "add_2d": 0.0, "overall": 0.125}
    assert read.accuracy[2]["overall"] == 0.375 and read.accuracy[4]["overall"] == 0.5
    assert read.held_out_length == {0: 10, 2: 12, 4: 14} and read.train_length == {1: 20, 2: 22, 3: 24, 4: 26}
    figure = bench.report(tmp_path, BUDGET, [0, 1])
    out = capsys.readouterr().out
    assert "Not finished yet (left out): correctness:1, format:0, format:1" in out
    assert "| 4 | 50.0 ± 0.0 (50.0–50.0) | 31.2 ± 8.8 (25.0–37.5) |" in out  # sd of 0.25, 0.375: 0.0884
    assert "| add_2d, step 4 | 25.0 ± 0.0 (25.0–25.0) | 12.5 ± 17.7 (0.0–25.0) |" in out
    assert "| 0 | 20.0 / 10.0 | 29.0 / 10.0 |" in out  # step 0: the first step's training samples; held-out at 0
    assert "| 4 | 26.0 / 14.0 | 35.0 / 34.0 |" in out
    assert (tmp_path / "label_free.png").stat().st_size > 0
    assert figure == {"metric": "label_free_final_accuracy_format_length_vs_correctness", "value": 0.3125,
                      "reference": 0.5, "ratio": 0.625, "unit": "held-out accuracy"}


def test_headline_without_finished_runs_says_none():
    assert report.headline({}, 20) == {"metric": "label_free_final_accuracy_format_length_vs_correctness", "value": None,
                                       "reference": None, "ratio": None, "unit": "held-out accuracy"}
    assert report.markdown_tables({"format": []}, MIXTURE, 20) == "(no finished runs yet)\n"


def test_a_missing_evaluation_is_an_error(tmp_path):
    run = fake_run(tmp_path, "format", 0, ACC, {0: 10, 2: 12, 4: 14}, [1, 2, 3, 4])
    rows = eval_rows(ACC[4], 14)
    del rows["distributions"]["add_2d"]
    (run / "eval_after.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="add_2d"):
        report.read_run("format", 0, run, MIXTURE, 4)


def test_every_arm_makes_a_valid_config_and_only_the_correctness_arm_reads_answers():
    from envs.source import check_run_inputs
    from rl.config import load_config

    budget = Budget(steps=20, eval_every=5, test_size=32, mixture=tuple(MIXTURE))
    names = {}
    for arm in bench.ARMS:
        config = load_config(bench.BASE_CONFIG, bench.train_overrides(arm, 1, budget, Path("/tmp/slot")))
        check_run_inputs(config)
        assert budget.matches(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
        assert (config.run.seed, config.train.steps, config.eval.every, config.env.test_size) == (1, 20, 5, 32)
        assert [c.name for c in config.eval.rewards] == ["boxed_answer", "boxed_format"]  # evaluation is the same for all
        names[arm] = (config.env.label_free, [c.name for c in config.rewards])
    assert names == {"correctness": (False, ["boxed_answer", "boxed_format"]), "format": (True, ["surrogate_format"]),
                     "format_length": (True, ["format_length"])}
    assert selected_slots(list(bench.ARMS), ["format_length:1", "format"], [0, 1]) == [
        ("format_length", 1), ("format", 0), ("format", 1)]


def test_the_grid_runs_each_unfinished_slot_once_and_reports_a_failure_with_its_log(tmp_path, capsys):
    from bench.support.grid import run_grid

    script = ("import json, pathlib, sys; slot = pathlib.Path(sys.argv[1]); run = slot / 'run-20261201-100000'; "
              "(run / 'final').mkdir(parents=True); (run / 'final' / 'config.json').write_text('{}'); "
              "(run / 'eval_after.json').write_text('{}'); "
              "(run / 'config.yaml').write_text(json.dumps({'train': {'steps': 4}, 'eval': {'every': 2}, "
              "'env': {'test_size': 32, 'sources': [{'distributions': ['add_1d', 'add_2d']}]}})); print('trained', slot.name)")
    started = []

    def new_command(arm, seed, slot):
        started.append((arm, seed))
        return [sys.executable, "-c", script, str(slot)]

    slots = [("format", 0), ("format_length", 0)]
    run_grid(slots, BUDGET, tmp_path, new_command, tmp_path)
    run_grid(slots, BUDGET, tmp_path, new_command, tmp_path)  # both finished: nothing runs again
    assert started == slots
    assert "trained format-seed0" in (tmp_path / "format-seed0" / "train.log").read_text()
    assert "finished earlier" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="(?s)correctness seed 1: `rl train` exited with 3.*boom"):
        run_grid([("correctness", 1)], BUDGET, tmp_path,
                 lambda arm, seed, slot: [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path)

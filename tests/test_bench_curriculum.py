"""bench/curriculum.py's report and bookkeeping on small fake run folders: the accuracy curve, the area
under it, the spread over seeds, samples spent, resume detection, slot selection, the last JSON line."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench.support.curriculum_report as report  # noqa: E402
import bench.support.grid as grid  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_curriculum", BENCH / "curriculum.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

MIXTURE = ["a", "b"]
BUDGET = report.Budget(steps=30, eval_every=10, test_size=16, mixture=("a", "b"))


def fake_run(slot: Path, stamp: str, accuracy: dict[int, dict[str, float]], *, steps: int = 30, finished: bool = True,
             checkpoint: bool = False, probability_a: float = 0.5) -> Path:
    """A run folder as `rl train` leaves it: config.yaml, eval_before/after.json, metrics.jsonl, final/, checkpoints/."""
    run = slot / f"{slot.name}-{stamp}"
    run.mkdir(parents=True)
    config = {"train": {"steps": steps}, "eval": {"every": 10}, "env": {"test_size": 16, "sources": [{"type": "arithmetic", "distributions": MIXTURE}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "eval_before.json").write_text(json.dumps({"distributions": {d: {"accuracy": accuracy[0][d]} for d in MIXTURE}}))
    lines = []
    for step in range(1, steps + 1):
        line = {"step": step, "curriculum/a/probability": probability_a if step > 1 else 0.5,
                "curriculum/b/probability": 1 - probability_a if step > 1 else 0.5,
                "curriculum/a/count": 12 * step, "curriculum/b/count": 20 * step}
        if step in accuracy and step != steps:
            line.update({f"eval/{d}/accuracy": accuracy[step][d] for d in MIXTURE})
        lines.append(json.dumps(line))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run / "eval_after.json").write_text(json.dumps({"distributions": {d: {"accuracy": accuracy[steps][d]} for d in MIXTURE}}))
        (run / "final").mkdir()
        (run / "final" / "config.json").write_text("{}")
    if checkpoint:
        (run / "checkpoints" / "step-000010").mkdir(parents=True)
        (run / "checkpoints" / "step-000010" / "trainer_state.json").write_text("{}")
    return run


# a: 0, 20, 40, 60 %; b: 0, 0, 20, 20 % -> mean 0, 10, 30, 40 %
#   AUC = 10 x (0 + 0.1) / 2 + 10 x (0.1 + 0.3) / 2 + 10 x (0.3 + 0.4) / 2 = 0.5 + 2 + 3.5 = 6.0
CURVE = {0: {"a": 0.0, "b": 0.0}, 10: {"a": 0.2, "b": 0.0}, 20: {"a": 0.4, "b": 0.2}, 30: {"a": 0.6, "b": 0.2}}


def scaled(curve, factor):
    return {step: {d: v * factor for d, v in row.items()} for step, row in curve.items()}


def test_curve_and_area_under_it_by_hand(tmp_path):
    run = fake_run(tmp_path / "uniform-seed0", "20261201-100000", CURVE)
    curve = report.accuracy_curve(run, MIXTURE, 30)
    assert curve == CURVE  # step 0 from eval_before, 10 and 20 from metrics.jsonl, 30 from eval_after
    steps, means = zip(*report.mean_curve(curve))
    assert steps == (0, 10, 20, 30) and means == pytest.approx([0.0, 0.1, 0.3, 0.4])
    assert report.area_under(report.mean_curve(curve)) == pytest.approx(6.0)
    assert report.area_under([(0, 1.0), (5, 1.0)]) == 5.0
    with pytest.raises(ValueError, match="two points"):
        report.area_under([(0, 1.0)])
    assert report.samples_spent(run, MIXTURE) == {"a": 360, "b": 600}  # the last step's cumulative counts


def test_spread_over_seeds_by_hand():
    s = report.Spread.of([0.5, 0.25, 0.75])
    # mean 0.5; deviations -0, -0.25, +0.25: sample variance (0.0625 + 0.0625) / 2 = 0.0625, sd 0.25
    assert (s.mean, s.sd, s.low, s.high, s.n) == (0.5, 0.25, 0.25, 0.75, 3)
    assert s.text() == "50.0 ± 25.0 (25.0–75.0)"
    assert report.Spread.of([0.3]).sd == 0.0


def test_resume_detection(tmp_path):
    slot = tmp_path / "ucb-seed1"
    assert report.finished_run(slot, BUDGET) is None and report.resumable_run(slot, BUDGET) is None  # nothing yet
    crashed = fake_run(slot, "20261201-090000", CURVE, finished=False)  # no checkpoint: nothing to resume
    assert report.finished_run(slot, BUDGET) is None and report.resumable_run(slot, BUDGET) is None
    interrupted = fake_run(slot, "20261201-100000", CURVE, finished=False, checkpoint=True)
    assert report.resumable_run(slot, BUDGET) == interrupted and crashed != interrupted
    smoke = fake_run(slot, "20261201-110000", {0: CURVE[0], 2: CURVE[30]}, steps=2)  # finished, another budget
    assert report.finished_run(slot, BUDGET) is None
    assert report.finished_run(slot, report.Budget(2, 10, 16, ("a", "b"))) == smoke
    assert report.finished_run(slot, report.Budget(30, 10, 16, ("a", "c"))) is None  # another mixture
    done = fake_run(slot, "20261201-120000", CURVE, checkpoint=True)
    assert report.finished_run(slot, BUDGET) == done
    assert report.resumable_run(slot, BUDGET) == interrupted  # the finished one is not "resumable"


def test_the_grid_runs_only_unfinished_slots(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    for arm in bench.ARMS:
        fake_run(report.slot_dir(runs, arm, 0), "20261201-100000", CURVE)
        report.add_seconds(report.slot_dir(runs, arm, 0), 600.0)
    started = []

    def run_slot(arm, seed, budget, runs_dir, new_command, repo):
        started.append((arm, seed))
        fake_run(report.slot_dir(runs_dir, arm, seed), "20261201-130000", CURVE)
        return "started", 900.0

    monkeypatch.setattr(grid, "run_slot", run_slot)
    bench.run_grid(bench.selected_slots([], [0, 1]), BUDGET, runs, MIXTURE, [], keep_checkpoints=False)
    assert started == [("uniform", 1), ("ucb", 1), ("ucb_correctness", 1)]  # seed 0 was finished
    out = capsys.readouterr().out
    assert "uniform seed 0: finished earlier" in out and "3 to run" in out
    assert "ETA 22.5 min" in out  # after the first new run: mean of 600, 600, 600, 900 s = 675 s x 2 runs left = 1350 s
    started.clear()
    bench.run_grid(bench.selected_slots([], [0, 1]), BUDGET, runs, MIXTURE, [], keep_checkpoints=False)
    assert started == []  # a second sitting runs nothing


def test_slot_selection():
    assert bench.selected_slots(["ucb:2"], [0, 1, 2]) == [("ucb", 2)]
    assert bench.selected_slots(["uniform", "ucb:0"], [0, 1]) == [("uniform", 0), ("uniform", 1), ("ucb", 0)]
    assert len(bench.selected_slots([], [0, 1, 2])) == 9
    with pytest.raises(SystemExit, match="--only 'dump:0'"):
        bench.selected_slots(["dump:0"], [0])
    with pytest.raises(SystemExit, match="seed 5 is not among --seeds 0,1"):
        bench.selected_slots(["ucb:5"], [0, 1])


def test_report_tables_plots_and_last_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, factor in enumerate([1.0, 0.5, 1.5]):
        fake_run(report.slot_dir(runs, "uniform", seed), "20261201-100000", scaled(CURVE, factor))  # AUC 6, 3, 9
        fake_run(report.slot_dir(runs, "ucb", seed), "20261201-100000", scaled(CURVE, factor / 2), probability_a=0.8)  # 3, 1.5, 4.5
    result = bench.report(runs, BUDGET, MIXTURE, [0, 1, 2])
    assert result == {"metric": "curriculum_auc_ucb_vs_uniform", "value": 3.0, "reference": 6.0, "ratio": 0.5,
                      "unit": "accuracy x steps"}
    out = capsys.readouterr().out
    assert "Not finished yet (left out): ucb_correctness:0, ucb_correctness:1, ucb_correctness:2" in out
    # uniform's final accuracy on a: 60, 30, 90 % -> 60.0 ± 30.0 (30.0–90.0)
    assert "| a | 60.0 ± 30.0 (30.0–90.0) | 30.0 ± 15.0 (15.0–45.0) |" in out
    assert "| uniform | 0, 1, 2 | 6.00 ± 3.00 (3.00–9.00) |" in out
    assert "| ucb | 360 (38%) | 600 (62%) |" in out
    assert (runs / "curriculum_accuracy.png").stat().st_size > 10_000
    assert (runs / "curriculum_probabilities.png").stat().st_size > 10_000  # ucb's probabilities move (0.5 -> 0.8)
    empty = bench.report(tmp_path / "none", BUDGET, MIXTURE, [0])
    assert (empty["value"], empty["reference"], empty["ratio"]) == (None, None, None)

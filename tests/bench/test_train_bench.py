"""``ctr bench train`` on CPU and ``trainer.compile`` on a tiny model."""

import pytest
import torch
import yaml

from ctr.bench.train import TrainBenchConfig, run_train_bench
from ctr.cli import main
from ctr.recipe import recipe_from_dict
from ctr.schema import Schema
from ctr.train.phases import PHASES
from ctr.train.net import CTRNet
from tests.conftest import tiny_recipe


@pytest.mark.slow
def test_bench_train_reports_samples_per_second_and_phases(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    result = run_train_bench(TrainBenchConfig(path, ["data.on_device=true"], "cpu", warmup=1, steps=4))
    assert result.samples == 4 * 512 and result.samples_per_s > 0 and result.busy is None
    assert set(result.phases) == set(PHASES) and all(v >= 0 for v in result.phases.values())
    assert result.phases["backward"] > 0 and result.phases["embedding"] > 0
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "train", str(path), "--device", "cpu", "--steps", "2", "--warmup", "0",
                     "-o", "trainer.num_threads=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "samples/s:" in out and "| backward |" in out
    assert "device: CPU (1 threads)" in out  # the recipe's threads, as ctr train runs them


def test_bench_train_without_profiled_steps_ends_its_window_at_the_last_step(tmp_path):
    """--profile-steps 0: no step follows the timed ones to close the window (it divided by
    zero seconds)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    result = run_train_bench(TrainBenchConfig(path, [], "cpu", warmup=1, steps=2, profile_steps=0))
    assert result.samples == 2 * 512 and result.seconds > 0 and result.samples_per_s > 0


def test_bench_train_on_a_cpu_trains_no_profiled_steps(tmp_path, monkeypatch):
    """The profiler runs on a GPU only: on a CPU the ``--profile-steps`` steps after the timed
    ones trained with nothing measured (10 more steps by default)."""
    from ctr.bench import train as bench

    steps = []
    monkeypatch.setattr(bench._Window, "on_train_batch_end", lambda self, *args: steps.append(self.step), raising=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    result = run_train_bench(TrainBenchConfig(path, [], "cpu", warmup=1, steps=2, profile_steps=3))
    assert steps == [1, 2, 3] and result.samples == 2 * 512 and result.seconds > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_bench_train_refuses_a_missing_gpu(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["bench", "train", str(path), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "ctr: error: --device cuda: no CUDA device is available"


@pytest.mark.parametrize("flags, said", [
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
    (["--profile-steps", "-2"], "--profile-steps: must be >= 0, got -2"),
    (["-o", "trainer.devices=2"], "-o trainer.devices=2: ctr bench train measures one process's training loop (it "
                                  "runs with trainer.devices and num_nodes 1); time a distributed run with ctr train"),
    (["-o", "trainer={devices: 2}"], "-o trainer={devices: 2}: ctr bench train measures one process's training loop "
                                     "(it runs with trainer.devices and num_nodes 1); time a distributed run with ctr "
                                     "train"),  # the section's mapping: it measured one process silently
    (["-o", "trainer={num_nodes: 2, precision: 32}"], "-o trainer={num_nodes: 2, precision: 32}: ctr bench train "
     "measures one process's training loop (it runs with trainer.devices and num_nodes 1); time a distributed run "
     "with ctr train"),
])
def test_bench_train_bad_count_names_its_flag(tmp_path, capsys, flags, said):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["bench", "train", str(path), "--device", "cpu", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {said}"


def test_compiled_dense_part_scores_as_eager(tiny_prepared, tmp_path):
    schema: Schema = tiny_prepared.schema
    nets = {}
    for flag in (False, True):
        torch.manual_seed(0)
        nets[flag] = CTRNet(recipe_from_dict(tiny_recipe(tmp_path, trainer={"compile": flag})), schema).eval()
    assert list(nets[True].state_dict()) == list(nets[False].state_dict())  # checkpoints unchanged
    from ctr.datasets import BatchLoader

    batch = next(iter(BatchLoader(tiny_prepared.split_dir("test"), schema, 256)))
    with torch.no_grad():
        torch.testing.assert_close(nets[True](batch)[0], nets[False](batch)[0], rtol=1e-4, atol=1e-5)
    assert nets[True].model._compiled_call_impl is not None


def test_the_report_says_the_rows_a_step_trained_where_batches_were_smaller_than_the_batch_size(tmp_path):
    """``-o train.batch_size=100000`` on a train split of 2,400 rows: every step trained the
    2,400 rows, and the report said "batch 100,000" only (as if each step trained 100,000)."""
    from ctr.bench.train import TrainBenchResult, format_result

    config = TrainBenchConfig(tmp_path / "tiny.yaml", [], "cpu", warmup=0, steps=3)
    small = TrainBenchResult("CPU (1 threads)", 100_000, 7_200, 1.0, dict.fromkeys(PHASES, 0.1), None, None)
    assert "recipe " + f"{config.recipe}, batch 100,000 (2,400 rows a timed step on average): 3 timed steps" in \
        format_result(small, config)
    whole = TrainBenchResult("CPU (1 threads)", 512, 3 * 512, 1.0, dict.fromkeys(PHASES, 0.1), None, None)
    assert f"recipe {config.recipe}, batch 512: 3 timed steps after 0 warm-up\n" in format_result(whole, config)


def test_the_report_names_no_smaller_rows_a_step_that_round_to_the_batch_size(tmp_path):
    """Batch 512 with a last batch of 500 rows in 50 steps (511.76 rows a step): the report said
    "batch 512 (512 rows a timed step on average)"."""
    from ctr.bench.train import TrainBenchResult, format_result

    config = TrainBenchConfig(tmp_path / "tiny.yaml", [], "cpu", warmup=0, steps=50)
    nearly = TrainBenchResult("CPU (1 threads)", 512, 49 * 512 + 500, 1.0, dict.fromkeys(PHASES, 0.1), None, None)
    assert f"recipe {config.recipe}, batch 512: 50 timed steps after 0 warm-up\n" in format_result(nearly, config)
    fewer = TrainBenchResult("CPU (1 threads)", 512, 49 * 512 + 400, 1.0, dict.fromkeys(PHASES, 0.1), None, None)
    assert "batch 512 (510 rows a timed step on average): 50 timed steps" in format_result(fewer, config)

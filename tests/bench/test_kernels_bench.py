"""``ctr bench kernels`` at a tiny size: it runs, reports every implementation, and its
byte formula and bandwidth table behave."""

import pytest
import torch

from ctr.bench.kernel_impls import Workload, fused_impl, loop_impl, tbe_impl, tbe_unavailable
from ctr.bench.kernels import KernelBenchConfig, forward_bytes, peak_bandwidth, resolve
from ctr.cli import main
from ctr.kernels.embedding_bag import Backend

TINY = ["--batch", "8", "--rows", "50", "--tables", "2", "--iters", "1", "--warmup", "0"]


def test_fbgemm_byte_formula():
    # out_bytes·B·ΣD + w_bytes·B·ΣD·L with B=2, ΣD=3·4, L=5, fp32
    assert forward_bytes(Workload(tables=3, rows=10, batch=2, dim=4, pooling=5)) == 4 * 2 * 12 + 4 * 2 * 12 * 5


def test_peak_bandwidth_override_and_cpu():
    assert peak_bandwidth(torch.device("cpu"), 100.0) == (100.0, "--peak-gbps")
    assert peak_bandwidth(torch.device("cpu"), None)[0] is None


def test_cpu_defaults_are_reduced_and_stated():
    config, device = resolve(KernelBenchConfig(device="cpu"))
    assert device.type == "cpu" and config.batch == 4096 and config.dims == [64, 128] and config.poolings == [1, 20]
    assert any("reduced size for CPU" in note for note in config.notes)


def test_lookup_suite_reports_every_implementation(capsys):
    assert main(["bench", "kernels", "--device", "cpu", "--dims", "4", "--pooling", "1,3", *TINY]) == 0
    out = capsys.readouterr().out
    assert "D=4, L=1:" in out and "D=4, L=3:" in out
    assert "nn.EmbeddingBag loop + rowwise_adagrad" in out and "ctr torch, fused rowwise_adagrad" in out
    if tbe_unavailable("rowwise_adagrad", torch.device("cpu")) is None:
        assert "fbgemm TBE module" in out and "ctr fbgemm" in out
    assert "GB/s" in out and "vs loop" in out


def test_step_suite_compares_with_sparse_gradient_adagrad(capsys):
    assert main(["bench", "kernels", "--suite", "step", "--device", "cpu", *TINY]) == 0
    out = capsys.readouterr().out
    assert "sparse grad + adagrad (default)" in out and "fused adagrad (torch)" in out
    assert "DeepFM MLP" in out


@pytest.mark.parametrize("flags, said", [
    (["--batch", "0"], "--batch: must be >= 1, got 0"),
    (["--iters", "-3"], "--iters: must be >= 1, got -3"),
    (["--dims", "8,16,8", *TINY], "--dims: 8 given twice (its workload would be timed twice)"),
    (["--pooling", "1,1", *TINY], "--pooling: 1 given twice (its workload would be timed twice)"),
    (["--alpha", "nan"], "--alpha: must be a finite number >= 0, got nan"),
    (["--alpha", "inf", "--device", "cpu", "--dims", "4", "--pooling", "1", *TINY],
     "--alpha: must be a finite number >= 0, got inf"),  # every id drawn was one row's, timed as Zipf alpha=inf
    (["--dims", "8,0"], "--dims: each must be >= 1, got 8,0"),
    (["--pooling", "-1"], "--pooling: each must be >= 1, got -1"),
    (["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
    (["--threads", "-1"], "--threads: must be >= 1, got -1"),
    (["--dims", "7"], "--dims: [7]: the FBGEMM tables compared take dims that are multiples of 4"),
    (["--peak-gbps", "-5"], "--peak-gbps: must be a finite number > 0, got -5.0"),
    (["--peak-gbps", "inf", *TINY], "--peak-gbps: must be a finite number > 0, got inf"),  # every % of peak read 0.0%
])
def test_bad_flag_is_one_line_exit_2(capsys, flags, said):
    """Each was a traceback (multinomial on NaN, set_num_threads, FBGEMM's assertion after
    other rows ran) or a negative "% of peak" before; the line names the flag at fault."""
    assert main(["bench", "kernels", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {said}"


@pytest.mark.parametrize("flags", [["--rows", "100000000000000"], ["--dims", "1000000000000"],
                                   ["--batch", "100000000000000"], ["--tables", "1000000000000", "--rows", "1000"]])
def test_a_workload_past_the_devices_memory_is_one_line_naming_its_sizes(capsys, flags):
    """Each ended in torch's allocator traceback once the tables or ids were made."""
    assert main(["bench", "kernels", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: the largest workload (--tables ") and len(err.splitlines()) == 1, err
    assert " ".join(flags) in err and "GiB, more than this device's " in err, err


def test_more_threads_than_the_usable_cores_are_refused(capsys, monkeypatch):
    """--threads 1000000000 aborted the process in libgomp ("Out of memory allocating ...");
    the cores counted are the affinity's, as trainer.num_threads counts them (a process kept
    to 4 of 64 CPUs was let run 64 threads)."""
    from ctr import host

    monkeypatch.setattr(host, "usable_cores", lambda: 4)
    assert main(["bench", "kernels", "--threads", "5"]) == 2
    assert capsys.readouterr().err.strip() == ("ctr: error: --threads: 5 is more than the 4 cores this process may run "
                                               "on (a benchmark of waiting threads measures nothing)")


def test_implementations_compute_the_same_pooling():
    work = Workload(tables=2, rows=7, batch=3, dim=4, pooling=2, alpha=1.2, seed=1)
    cpu = torch.device("cpu")
    loop, fused = loop_impl(work, "sgd", cpu), fused_impl(work, "sgd", Backend.TORCH, cpu)
    weights = torch.randn(2, 7, 4)
    loop.load(weights)
    fused.load(weights)
    want = loop.forward()  # [B, T·D]
    got = fused.forward().view(2, 3, 4).permute(1, 0, 2).reshape(3, 8)
    torch.testing.assert_close(got, want)
    if tbe_unavailable("sgd", cpu) is None:
        tbe = tbe_impl(work, "sgd", cpu)
        tbe.load(weights)
        torch.testing.assert_close(tbe.forward(), want)


@pytest.mark.parametrize(
    "name, gbps",
    [("NVIDIA H200", 4800.0), ("NVIDIA GH200 480GB", 4000.0), ("NVIDIA H100 80GB HBM3", 3350.0),
     ("NVIDIA A100-SXM4-40GB", 1555.0), ("NVIDIA A10G", 600.0), ("NVIDIA L4", 300.0), ("Mystery GPU", None)],
)
def test_peak_bandwidth_by_device_name(monkeypatch, name, gbps):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_bandwidth(torch.device("cuda"), None)[0] == gbps


def test_a_whole_call_timed_no_slower_than_its_forward_has_no_backward_figure():
    """Noise on a busy machine can make the forward-only loop as slow as the whole one: the
    backward was clamped to ~0 ms and shown at ~10⁶ GB/s, and its "vs loop" used the forward alone."""
    from ctr.bench.kernels import _lookup_table

    work = Workload(tables=2, rows=10, batch=4, dim=4, pooling=1)
    rows = _lookup_table([("loop", 1.0, 3.0), ("fused", 0.9, 0.8)], work, peak=100.0)
    fused = [cell.strip() for cell in rows[-1].split("|")[1:-1]]
    assert fused[4:7] == ["n/a", "n/a", "n/a"]  # bwd+upd ms, GB/s, % of peak
    assert fused[7:] == ["0.80", "3.75x"]  # the whole call as timed, against the loop's whole call


@pytest.mark.parametrize("given", [",", "", "4,x"])
def test_a_size_list_without_integers_is_refused_not_taken_for_the_default(capsys, given):
    """``--dims ,`` ran the default (full-size) dims."""
    with pytest.raises(SystemExit) as stop:
        main(["bench", "kernels", "--device", "cpu", "--dims", given, *TINY])
    assert stop.value.code == 2
    assert f"--dims: expected comma-separated integers, got {given!r}" in capsys.readouterr().err


def test_options_of_the_lookup_suite_are_refused_by_the_step_suite(capsys):
    """``--suite step`` ran its own updates and no bandwidth while --optimizer and --peak-gbps
    were silently ignored."""
    code = main(["bench", "kernels", "--suite", "step", "--device", "cpu", "--optimizer", "adagrad", "--peak-gbps", "50",
                 *TINY])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("ctr: error: --optimizer and --peak-gbps: the lookup suite's; --suite "
                                               "step compares its own updates (adagrad, rowwise_adagrad) and reports "
                                               "no bandwidth")

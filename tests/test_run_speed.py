"""Whole-run speed (issue 22): threads sized to the CPUs a process may use, and the epoch files'
figure drawn within a time budget instead of after every epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.runtime import available_cpus, configure_threads
from pipeline.train.loop import BackgroundWriter


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _cgroup(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[str, str]:
    proc = tmp_path / "proc_cgroup"
    proc.write_text(lines)
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_quota_of_an_ancestor_caps_the_cpus(tmp_path):
    proc, root = _cgroup(tmp_path, "0::/user.slice/job\n", {
        "user.slice/cpu.max": "50000 100000\n",  # half a CPU on the parent: the tightest limit
        "user.slice/job/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert available_cpus(proc, root) == 1


def test_cgroup_v2_fractional_quota_rounds_up_and_never_exceeds_the_affinity(tmp_path):
    proc, root = _cgroup(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})  # a container's namespace: "/"
    assert available_cpus(proc, root) == min(_affinity(), 2)
    proc, root = _cgroup(tmp_path, "0::/\n", {"cpu.max": "6400000 100000\n"})  # 64 CPUs: the affinity decides
    assert available_cpus(proc, root) == _affinity()


def test_cgroup_v1_quota_and_no_limit(tmp_path):
    d = "cpu,cpuacct/docker/abc"
    files = {f"{d}/cpu.cfs_quota_us": "100000\n", f"{d}/cpu.cfs_period_us": "100000\n"}
    proc, root = _cgroup(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", files)
    assert available_cpus(proc, root) == 1
    files[f"{d}/cpu.cfs_quota_us"] = "-1\n"
    proc, root = _cgroup(tmp_path, "4:cpu,cpuacct:/docker/abc\n", files)
    assert available_cpus(proc, root) == _affinity()


def test_no_cgroup_information_is_the_affinity(tmp_path):
    assert available_cpus(str(tmp_path / "missing"), str(tmp_path)) == _affinity()
    proc, root = _cgroup(tmp_path, "0::/a\n", {"a/cpu.max": "garbage\n"})  # unreadable: no limit, no error
    assert available_cpus(proc, root) == _affinity()


@pytest.fixture()
def thread_env(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OPENCV_FOR_THREADS_NUM", raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_configure_threads_lowers_torch_and_sets_opencv(thread_env):
    thread_env.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert configure_threads(1) == 1
    assert torch.get_num_threads() == 1 and os.environ["OPENCV_FOR_THREADS_NUM"] == "1"
    torch.set_num_threads(1)
    configure_threads(4)  # never raised above torch's own choice
    assert torch.get_num_threads() == 1


def test_configure_threads_keeps_the_users_explicit_settings(thread_env):
    thread_env.setenv("OMP_NUM_THREADS", "2")
    thread_env.setenv("OPENCV_FOR_THREADS_NUM", "3")
    torch.set_num_threads(2)
    configure_threads(1)
    assert torch.get_num_threads() == 2 and os.environ["OPENCV_FOR_THREADS_NUM"] == "3"


def _job(log: list, i: int):
    """An epoch's files: written now (``log``), its figure returned for later."""
    log.append(("write", i))
    return lambda: log.append(("figure", i, threading.current_thread().name))


def test_writer_draws_only_the_newest_figure_within_the_gap():
    log: list = []
    with BackgroundWriter(min_gap=1000) as w:
        for i in range(5):
            w.submit(_job, log, i)
    assert [e for e in log if e[0] == "write"] == [("write", i) for i in range(5)]
    figures = [e for e in log if e[0] == "figure"]
    assert [f[1] for f in figures] == [4] and figures[0][2].startswith("epoch-files")
    assert log[-1][0] == "figure"  # drawn after the last write, before the block ends


def test_writer_draws_every_figure_when_the_budget_allows():
    log: list = []
    with BackgroundWriter(min_gap=0, share=1.0) as w:
        for i in range(3):
            w.submit(_job, log, i)
            w.flush()
    assert [e[1] for e in log if e[0] == "figure"] == [0, 1, 2]


def test_writer_spaces_figures_by_their_cost():
    log: list = []

    def slow_job(i):
        log.append(("write", i))
        return lambda: (time.sleep(0.05), log.append(("figure", i)))

    with BackgroundWriter(min_gap=0, share=0.01) as w:  # a 0.05 s figure: the next one not before 5 s
        for i in range(4):
            w.submit(slow_job, i)
            w.flush()
    assert [e[1] for e in log if e[0] == "figure"] == [0, 3]


def test_writer_raises_a_write_error_and_still_draws_the_last_figure():
    log: list = []

    def failing():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter(min_gap=1000) as w:
        w.submit(_job, log, 0)
        w.submit(failing)
    assert log[-1][:2] == ("figure", 0)


def test_a_fold_releases_its_references_and_the_next_one_collects(monkeypatch):
    from pipeline.runtime import new_accelerator
    from pipeline.train import stage

    acc = new_accelerator("no", cpu=True)
    model = acc.prepare(torch.nn.Linear(2, 2))
    assert acc._models
    stage._release(acc)
    assert acc._models == [] and stage._collect_pending  # no gc.collect at the end of the last fold
    calls = []
    monkeypatch.setattr("accelerate.utils.release_memory", lambda *a: calls.append(a))
    stage._collect_last_fold()
    stage._collect_last_fold()
    assert calls == [()] and not stage._collect_pending and model is not None


def test_optimizer_step_equals_accelerates_wrapper_also_while_accumulating():
    from pipeline.runtime import new_accelerator
    from pipeline.train.engine import _optimizer_step

    acc = new_accelerator("no", cpu=True)
    acc.gradient_accumulation_steps = 2
    weights = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        model, opt = acc.prepare(model, torch.optim.Adam(model.parameters(), lr=0.1))
        x = torch.randn(5, 8, 4)
        seen = []
        for step in range(5):
            with acc.accumulate(model):
                acc.backward(model(x[step]).square().mean())
                seen.append(acc.sync_gradients)
                if fast:
                    _optimizer_step(opt, acc)
                else:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        weights.append([p.detach().clone() for p in model.parameters()])
        acc.free_memory()
    assert seen == [False, True, False, True, False]  # an odd step left accumulating
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip


def test_exit_now_keeps_the_exit_code_output_and_atexit_functions():
    r = _python(
        "import atexit, logging, sys\n"
        "from pipeline.__main__ import exit_now\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "logging.basicConfig(stream=sys.stderr); logging.getLogger('x').warning('logged')\n"
        "print('out')  # block-buffered into the pipe: flushed before the process ends\n"
        "exit_now(3)\n"
        "print('never')\n"
    )
    assert r.returncode == 3 and r.stdout == "out\natexit ran\n" and "logged" in r.stderr


def test_exit_now_waits_for_a_running_thread_as_a_normal_exit_does():
    r = _python(
        "import threading, time\n"
        "from pipeline.__main__ import exit_now\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "exit_now(0)\n"
    )
    assert r.returncode == 0 and r.stdout == "thread done\n"


def test_the_cli_still_exits_2_with_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline", "train", "--config", "configs/cifar10.yaml",
                        f"data_root={tmp_path}", f"runs_root={tmp_path}"], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr

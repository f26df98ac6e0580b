"""Fixtures shared by the trainer tests, and the CPU pin: tests not marked ``gpu`` run on the CPU even on a
machine with a GPU (``device: auto`` would pick CUDA there, and bit-exact comparisons assume CPU arithmetic)."""
import os

import pytest
import torch


def pytest_configure(config):
    # before anything initialises CUDA; inherited by the torchrun and job subprocesses the tests start
    if "gpu" not in (config.option.markexpr or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Smoke data built once per module into a scratch data root, a fixed random smoke teacher saved as
    ``teacher.pt`` there, one torch thread (fast and deterministic on 2 cores)."""
    from tinyclip.data import build
    from tinyclip.runner import load_model

    data_root = tmp_path_factory.mktemp("data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYCLIP_DATA_ROOT", str(data_root))
        mp.setenv("TINYCLIP_PROGRESS", "0")
        mp.setenv("OMP_NUM_THREADS", "1")
        build("smoke")
        torch.manual_seed(0)
        teacher = load_model("TinyCLIP-smoke-teacher", None)
        torch.save(teacher.state_dict(), data_root / "teacher.pt")
        yield data_root
    torch.set_num_threads(threads)


@pytest.fixture
def runs(env, tmp_path, monkeypatch):
    """A scratch runs root (TINYCLIP_RUNS_ROOT) on top of the smoke data."""
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"

"""Issue 24: a backend counts as available only when its module imports and a tiny call runs on the device.
``auto`` skips one that is installed but broken (flash-attn-4 without its CuTe DSL libraries) and says so once,
in one line; a named one that cannot run is one line naming what is missing and the install command, raised
when the backend is resolved; the probe runs once; an explicit argument beats VIDPORT_ATTENTION_BACKEND.

CPU has no CUDA backends, so these tests pass their own table of backends and ``auto`` rules for the CPU
(the ``backends=`` / ``rules=`` arguments), with a fake ``flash_attn.cute`` package on ``sys.path``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from vidport.runtime import attention
from vidport.runtime.attention import (
    BACKENDS,
    ENV_OVERRIDE,
    AutoRule,
    Backend,
    resolve_backend,
    resolve_backends,
    why_unavailable,
)

from vidport.errors import UserError

INSTALL = "pip install 'flash-attn-4[cu13]'"
F32 = torch.float32
# on this CPU: flash-attn-4 first for the self-attention, then sdpa-math, as the Hopper rules do with cuDNN
CPU_RULES = (AutoRule(None, (F32,), "flash-attn-4", "test", kinds=("self",), device_type="cpu"),
             AutoRule(None, (F32,), "sdpa-math", "test", device_type="cpu"))


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(attention, "_SAID", set())  # each test hears its fallback lines anew
    yield
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        del sys.modules[name]


def fake_flash_attn(root: Path, cute_body: str) -> None:
    """A ``flash_attn`` package under ``root`` whose ``cute`` module runs ``cute_body`` when imported."""
    (root / "flash_attn" / "cute").mkdir(parents=True)
    (root / "flash_attn" / "__init__.py").write_text("")
    (root / "flash_attn" / "cute" / "__init__.py").write_text(cute_body)


class Counted:
    """A backend function that counts its calls (the probe's tiny call included)."""

    def __init__(self, error: Exception | None = None):
        self.calls, self.error = 0, error

    def __call__(self, q, k, v, key_mask=None):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return attention.sdpa_math(q, k, v, key_mask)


def table(fn) -> dict[str, Backend]:
    """The CPU backends plus a flash-attn-4 that runs on the CPU (through ``fn``) once its module imports."""
    fa4 = Backend(fn, ("cpu",), module="flash_attn.cute", install=INSTALL,
                  missing="its CuTe DSL libraries are missing")
    return {name: BACKENDS[name] for name in ("sdpa", "sdpa-math")} | {"flash-attn-4": fa4}


def fallback_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == attention.__name__]


def test_cuda_backends_need_cuda_on_cpu():
    for name in ("flash-attn-4", "flash-attn", "sdpa-cudnn", "sdpa-efficient"):
        assert why_unavailable(name, "cpu") == "needs CUDA"
    assert why_unavailable("sdpa", "cpu") is None
    assert attention.available_backends("cpu") == ["sdpa", "sdpa-flash", "sdpa-math"]


def test_auto_skips_a_backend_whose_libraries_are_missing(tmp_path, monkeypatch, caplog):
    """flash_attn.cute itself imports ``cutlass``, which is not there: auto takes the next rule, once, saying
    what is missing and how to install it."""
    fake_flash_attn(tmp_path, "import cutlass  # the CuTe DSL\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = Counted()
    caplog.set_level(logging.INFO, logger=attention.__name__)
    for _ in range(3):
        assert resolve_backends("auto", "cpu", F32, backends=table(fn), rules=CPU_RULES) == ("sdpa-math", "sdpa-math")
    assert fn.calls == 0
    [line] = fallback_lines(caplog)
    assert line.levelno == logging.WARNING and "\n" not in line.getMessage()
    assert line.getMessage() == ("vidport attention: flash-attn-4 is installed but its CuTe DSL libraries are "
                                 f"missing (No module named 'cutlass'): {INSTALL}; using sdpa-math")


def test_auto_skips_a_backend_whose_call_fails(tmp_path, monkeypatch, caplog):
    """The form issue 24 took: ``flash_attn.cute`` imports, and the op raises ModuleNotFoundError('cutlass')
    when called (on rank 0, mid-run). The probe's tiny call finds it at resolve time instead."""
    fake_flash_attn(tmp_path, "")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = Counted(ModuleNotFoundError("No module named 'cutlass'", name="cutlass"))
    caplog.set_level(logging.INFO, logger=attention.__name__)
    assert resolve_backend("auto", "cpu", F32, backends=table(fn), rules=CPU_RULES) == "sdpa-math"
    assert resolve_backend("auto", "cpu", F32, backends=table(fn), rules=CPU_RULES) == "sdpa-math"
    assert fn.calls == 1
    [line] = fallback_lines(caplog)
    assert "flash-attn-4 is installed but its CuTe DSL libraries are missing (No module named 'cutlass')" in \
        line.getMessage() and line.getMessage().endswith("; using sdpa-math")


def test_auto_skips_a_backend_that_is_not_installed(caplog):
    """Not installing an optional package is a choice: one line at INFO, not a warning."""
    caplog.set_level(logging.INFO, logger=attention.__name__)
    fn = Counted()
    assert resolve_backends(None, "cpu", F32, backends=table(fn), rules=CPU_RULES) == ("sdpa-math", "sdpa-math")
    [line] = fallback_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == f"vidport attention: flash-attn-4 is not installed ({INSTALL}); using sdpa-math"


def test_auto_takes_a_backend_that_works(tmp_path, monkeypatch, caplog):
    fake_flash_attn(tmp_path, "")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = Counted()
    caplog.set_level(logging.INFO, logger=attention.__name__)
    assert resolve_backends("auto", "cpu", F32, backends=table(fn), rules=CPU_RULES) == ("flash-attn-4", "sdpa-math")
    assert fallback_lines(caplog) == []


@pytest.mark.parametrize("broken", ["libraries", "call", "absent"])
def test_a_named_backend_that_cannot_run_is_one_line(tmp_path, monkeypatch, broken):
    if broken != "absent":
        fake_flash_attn(tmp_path, "import cutlass\n" if broken == "libraries" else "")
        monkeypatch.syspath_prepend(str(tmp_path))
    fn = Counted(RuntimeError("CUDA error: no kernel image is available\nmore") if broken == "call" else None)
    with pytest.raises(UserError) as info:
        resolve_backend("flash-attn-4", "cpu", F32, backends=table(fn), rules=CPU_RULES)
    message = str(info.value)
    assert "\n" not in message and message.startswith("attention backend 'flash-attn-4' cannot run on cpu: ")
    assert message.endswith("; runnable here: auto, sdpa, sdpa-math")
    expect = {"libraries": f"its CuTe DSL libraries are missing (No module named 'cutlass'): {INSTALL}",
              "call": "flash-attn-4 fails on cpu in float32 (RuntimeError: CUDA error: no kernel image is available)",
              "absent": f"flash-attn-4 is not installed ({INSTALL})"}[broken]
    assert expect in message


def test_the_probe_runs_once_per_backend_device_and_dtype(tmp_path, monkeypatch):
    fake_flash_attn(tmp_path, "")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = Counted()
    backends = table(fn)
    for _ in range(3):
        assert resolve_backends("flash-attn-4", "cpu", F32, backends=backends) == ("flash-attn-4", "flash-attn-4")
        assert resolve_backends("auto", "cpu", F32, backends=backends, rules=CPU_RULES)[0] == "flash-attn-4"
        assert "flash-attn-4" in attention.available_backends("cpu", F32, backends=backends)
    assert fn.calls == 1
    resolve_backend("flash-attn-4", "cpu", torch.float64, backends=backends)  # another dtype: probed anew
    assert fn.calls == 2
    q = torch.randn(1, 5, 2, 8)
    attention.get_backend("sdpa")(q, q, q)  # a call never probes
    assert fn.calls == 2


def test_an_explicit_backend_beats_the_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_OVERRIDE, "sdpa-math")
    assert resolve_backends("sdpa", "cpu") == ("sdpa", "sdpa")
    assert resolve_backends(None, "cpu") == ("sdpa-math", "sdpa-math")  # the variable sets the default
    monkeypatch.setenv(ENV_OVERRIDE, "flash-attn-4")  # not runnable here: only used when nothing is named
    assert resolve_backends("auto", "cpu") == ("sdpa", "sdpa")
    with pytest.raises(UserError, match=f"^attention backend {ENV_OVERRIDE}=flash-attn-4 cannot run on cpu;"):
        resolve_backends(None, "cpu")


def test_generator_refuses_an_unavailable_backend_before_loading(tmp_path, monkeypatch):
    """``VideoGenerator.from_pretrained`` resolves the backend before it loads any component."""
    from vidport.runtime import VideoGenerator
    from vidport.runtime.models.wan import pipeline

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: pytest.fail("loaded before resolving"))
    with pytest.raises(UserError, match=r"^attention backend 'flash-attn-4' cannot run on cpu; runnable here"):
        VideoGenerator.from_pretrained(tmp_path, attention_backend="flash-attn-4", device="cpu")


def _resolve_on_rank(worker, name):
    from vidport.runtime.parallel.generator import resolve_backends_on_ranks

    return worker.rank, resolve_backends_on_ranks(name, worker.device, torch.float32)


def test_ranks_take_rank_0s_backends(monkeypatch):
    """Rank 0 resolves (the environment default included); its refusal reaches the caller as one UserError
    rather than leaving the other ranks waiting in the broadcast."""
    from vidport.runtime.parallel.launch import WorkerPool

    monkeypatch.setenv(ENV_OVERRIDE, "sdpa-math")
    with WorkerPool(2, device="cpu") as pool:
        assert pool.run(_resolve_on_rank, None) == (0, ("sdpa-math", "sdpa-math"))
        with pytest.raises(UserError, match=r"^unknown attention backend 'xformers'; runnable here: auto, sdpa"):
            pool.run(_resolve_on_rank, "xformers")

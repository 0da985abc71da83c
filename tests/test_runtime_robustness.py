"""User-reported runtime failures, each one clear line: a full disk while the mp4 is written, an output
folder nothing can be written to (/proc), a closed single-GPU generator, a multi-GPU script without the
main guard, a mistyped local folder, the hub while offline; and no library progress bars from loading."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from vidport.errors import UserError

TINY = dict(num_frames=1, height=16, width=16, num_inference_steps=1, guidance_scale=1.0, seed=0)
LOAD = dict(attention_backend="sdpa-math", dtype="fp32", device="cpu")
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_port(*args: str, env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vidport.porting.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)
    return proc, time.perf_counter() - start


def fail_if_loaded(*args, **kwargs):
    pytest.fail("a model was loaded although the command should have failed before loading")


# ---------------------------------------------------------------------------------------------
# 1. disk full while writing the mp4
# ---------------------------------------------------------------------------------------------
class FakeWriter:
    """Stands in for imageio's ffmpeg writer: ``append`` / ``close`` do what a failing ffmpeg would."""

    def __init__(self, path, append=None, close=None):
        self.path, self._append, self._close = path, append, close

    def append_data(self, frame):
        if self._append:
            self._append(self.path, frame)

    def close(self):
        if self._close:
            self._close(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raise_(error):
    def fail(*args):
        raise error
    return fail


def real_writer_then(damage):
    """imageio's real writer, whose output ``damage(path)`` spoils after it closed without an error (as
    ffmpeg does when the disk fills while it writes the trailer: exit 1, imageio does not look)."""
    import imageio.v2 as imageio

    real = imageio.get_writer

    def get_writer(path, **kwargs):
        writer = real(path, **kwargs)
        close = writer.close

        def close_then_damage():
            close()
            damage(path)

        writer.close = close_then_damage
        return writer

    return get_writer


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # the moov atom (the index) is at the end: unreadable


@pytest.fixture
def frames():
    return np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("writer, cause", [
    (lambda path, **kw: FakeWriter(path, append=raise_(ENOSPC)), "no space left on device"),
    (lambda path, **kw: FakeWriter(path, close=raise_(ENOSPC)), "no space left on device"),
    (lambda path, **kw: FakeWriter(path), "ffmpeg wrote an empty file"),
    (real_writer_then(truncate), "the encoded video is unreadable (Error opening input files: Invalid data found"),
], ids=["append-enospc", "trailer-enospc", "empty-file", "truncated-file"])
def test_failed_mp4_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, frames, writer, cause):
    import imageio.v2 as imageio
    from vidport.runtime.video import write_mp4

    monkeypatch.setattr(imageio, "get_writer", writer)
    out = tmp_path / "cat.mp4"
    with pytest.raises(UserError) as info:
        write_mp4(frames, out)
    assert str(info.value).startswith(f"cannot write {out}: {cause}"), str(info.value)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_frame_is_a_failed_write(tmp_path, monkeypatch, frames):
    import imageio.v2 as imageio
    from vidport.runtime.video import write_mp4

    real = imageio.get_writer

    def drops_the_last_frame(path, **kwargs):
        writer = real(path, **kwargs)
        append, seen = writer.append_data, []

        def append_all_but_the_fifth(frame):
            seen.append(frame)
            if len(seen) != 5:
                append(frame)

        writer.append_data = append_all_but_the_fifth
        return writer

    monkeypatch.setattr(imageio, "get_writer", drops_the_last_frame)
    with pytest.raises(UserError, match=r"^cannot write .*cat\.mp4: the encoded video has 4 of 5 frames$"):
        write_mp4(frames, tmp_path / "cat.mp4")
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_dying_on_a_full_disk_names_the_disk(tmp_path, monkeypatch, frames):
    """ffmpeg reports ENOSPC on its own stderr; imageio then sees a broken pipe (or nothing at all): with
    the disk full, that is the cause to name."""
    import imageio.v2 as imageio
    from vidport.runtime import video

    broken_pipe = OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg -y ...\n\nFFMPEG STDERR OUTPUT:\n")
    truncating_writer = real_writer_then(truncate)
    monkeypatch.setattr(video, "_free_bytes", lambda folder: 0)
    monkeypatch.setattr(imageio, "get_writer", lambda path, **kw: FakeWriter(path, append=raise_(broken_pipe)))
    with pytest.raises(UserError, match=r"^cannot write .*: no space left on device \(\[Errno 32\] Broken pipe\)$"):
        video.write_mp4(frames, tmp_path / "a.mp4")
    monkeypatch.setattr(imageio, "get_writer", truncating_writer)
    with pytest.raises(UserError, match=r"^cannot write .*: no space left on device \(the encoded video is unread"):
        video.write_mp4(frames, tmp_path / "b.mp4")
    assert list(tmp_path.iterdir()) == []


def test_generate_on_a_full_disk_exits_2_without_wrote(converted_tiny_release, tmp_path, monkeypatch, capsys):
    import imageio.v2 as imageio
    from vidport.porting.cli import main

    monkeypatch.setattr(imageio, "get_writer", lambda path, **kw: FakeWriter(path, close=raise_(ENOSPC)))
    out = tmp_path / "cat.mp4"
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(converted_tiny_release), "--prompt", "a cat", "-o", str(out), "--device", "cpu",
              "--num-frames", "1", "--height", "16", "--width", "16", "--steps", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2
    assert captured.err.strip().splitlines() == [f"error: cannot write {out}: no space left on device"]
    assert "wrote" not in captured.out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 2. an output folder no file can be made in
# ---------------------------------------------------------------------------------------------
needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")


@needs_proc
def test_output_under_proc_fails_before_loading(monkeypatch, capsys):
    from vidport.porting.cli import main
    from vidport.runtime.generator import VideoGenerator

    monkeypatch.setattr(VideoGenerator, "from_pretrained", fail_if_loaded)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "converted_weights/wan2.1-t2v-tiny", "--prompt", "a cat", "-o", "/proc/vidport.mp4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err == ["error: output folder /proc is not writable (no such file or directory); choose another --output"]


@needs_proc
def test_writer_cannot_create_its_temporary_file(frames):
    from vidport.runtime.video import write_mp4

    with pytest.raises(UserError) as info:
        write_mp4(frames, "/proc/vidport.mp4")
    assert str(info.value) == ("cannot write /proc/vidport.mp4: cannot create a file in /proc "
                               "(no such file or directory)")


def test_output_check_leaves_nothing_behind(tmp_path):
    from vidport.runtime.pipeline.validate import validate_output_path

    assert validate_output_path(tmp_path / "x.mp4") == tmp_path / "x.mp4"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 3. the single-GPU generator closes, like the multi-GPU one
# ---------------------------------------------------------------------------------------------
def test_single_gpu_generator_is_a_context_manager(converted_tiny_release):
    from vidport.runtime import VideoGenerator

    with VideoGenerator.from_pretrained(converted_tiny_release, **LOAD) as gen:
        frames = gen.generate_video("a cat", **TINY)
        assert frames.shape == (1, 16, 16, 3)
        transformer = weakref.ref(gen.components.transformer)
    assert gen.closed and gen.components is None and gen.last_state is None
    assert transformer() is None, "close() must drop the model (something still refers to the DiT)"
    assert gen.last_report is not None  # what the last run did stays readable
    gen.close()  # idempotent
    with pytest.raises(UserError, match=r"^this VideoGenerator \(.*\) is closed; load the model again"):
        gen.generate_video("a cat", **TINY)


# ---------------------------------------------------------------------------------------------
# 4. a multi-GPU script without the main guard
# ---------------------------------------------------------------------------------------------
def test_unguarded_multi_gpu_script_names_the_main_guard(converted_tiny_release, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from vidport.runtime import VideoGenerator

        gen = VideoGenerator.from_pretrained({str(converted_tiny_release)!r}, num_gpus=2, device="cpu")
        print("loaded")
        gen.close()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "loaded" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.split(": ", 1)[0].endswith("UserError"), proc.stderr
    assert 'wrap the code that creates VideoGenerator(num_gpus>1) in `if __name__ == "__main__":`' in last
    assert "re-imports your script" in last and "without reporting an error" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# 5. a mistyped local folder; the hub while offline
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("converted_weights/wan2.1-t2v-tinyy",
     "converted_weights/wan2.1-t2v-tinyy: no such folder; did you mean converted_weights/wan2.1-t2v-tiny?"),
    ("converted_weights/wan2.1-t2v-tinyy/transformer", "converted_weights/wan2.1-t2v-tinyy/transformer: no such "
     "folder; did you mean converted_weights/wan2.1-t2v-tiny/transformer?"),
    ("converted_weights/zzz", "converted_weights/zzz: no such folder; pass a Diffusers-format repo folder"),
    ("./owner/name", "./owner/name: no such folder; pass a Diffusers-format repo folder"),
])
def test_mistyped_local_folder_is_not_a_hub_download(tmp_path, monkeypatch, capsys, spec, message):
    from vidport.porting.cli import main
    from vidport.runtime import generator

    (tmp_path / "converted_weights" / "wan2.1-t2v-tiny" / "transformer").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generator, "download", lambda repo_id: pytest.fail(f"{repo_id} went to the hub"))
    with pytest.raises(SystemExit) as exit_:
        main(["generate", spec, "--prompt", "a cat", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed: connection refused


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
@pytest.mark.parametrize("command", [
    ("diff-keys", "hf:owner/name", "native:wan2.1-t2v-tiny"),
    ("generate", "owner/name", "--prompt", "a cat"),
], ids=["diff-keys", "generate"])
def test_hub_while_offline_is_one_quick_line(tmp_path, offline, command):
    # no network, whatever this machine has: the hub's address refuses connections
    env = {"HF_HUB_OFFLINE": "1"} if offline else {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    reason = "HF_HUB_OFFLINE is set" if offline else "cannot reach the Hugging Face hub"
    args = (*command, "-o", str(tmp_path / "x.mp4")) if command[0] == "generate" else command
    proc, seconds = run_port(*args, env=env, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], proc.stderr
    assert "hf download owner/name" in lines[0]
    if offline:
        assert "HF_HUB_OFFLINE=0" in lines[0]
    assert seconds < 5, f"{seconds:.1f} s"


def test_a_hub_that_does_not_answer_fails_within_the_timeout(monkeypatch, capfd):
    """A connection that opens but never answers (a captive portal, a dead proxy) gets HUB_TIMEOUT seconds
    and one try, not huggingface_hub's unbounded wait or its retries."""
    import huggingface_hub.constants
    from vidport.porting.sources import HUB_TIMEOUT, HubUnreachable, hub_repo_files

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes connections; nobody ever reads or answers
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        # huggingface_hub >= 2 first fetches an agent registry for its user-agent (its own 3 s timeout): off,
        # so this measures the request vidport bounds
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        capfd.readouterr()
        start = time.perf_counter()
        with pytest.raises(HubUnreachable, match="cannot reach the Hugging Face hub"):
            hub_repo_files("owner/name")
        assert time.perf_counter() - start < HUB_TIMEOUT + 1.5
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# 6. no library progress bars from loading
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def library_bars_on():
    """Progress bars and warnings on, as in a fresh interpreter (a CLI test may have turned them off)."""
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tlog

    saved = [(lib, lib.is_progress_bar_enabled(), lib.get_verbosity()) for lib in (tlog, dlog)]
    hub_off = hub_utils.are_progress_bars_disabled()
    for lib, _, _ in saved:
        lib.enable_progress_bar()
        lib.set_verbosity_warning()
    yield
    for lib, bar, verbosity in saved:
        (lib.enable_progress_bar if bar else lib.disable_progress_bar)()
        lib.set_verbosity(verbosity)
    (hub_utils.disable_progress_bars if hub_off else hub_utils.enable_progress_bars)()


def test_from_pretrained_writes_nothing_to_stderr(converted_tiny_release, library_bars_on, capfd):
    import transformers.utils.logging as tlog
    from vidport.runtime import VideoGenerator

    capfd.readouterr()
    VideoGenerator.from_pretrained(converted_tiny_release, **LOAD)
    assert capfd.readouterr().err == ""
    # the caller's settings come back
    assert tlog.is_progress_bar_enabled() and tlog.get_verbosity() == tlog.WARNING

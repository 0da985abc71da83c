"""One CLI vocabulary: every option documented, the same idea spelled the same way in every command,
renamed options still accepted with a warning, bad arguments rejected before torch is imported, and a
discovery command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from vidport.porting.cli import COMMANDS, cli, main

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "official_weights" / "wan2.1-t2v-tiny"


def _commands():
    """(path, click command) of every leaf command."""
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from ((f"{name} {sub}", c) for sub, c in cmd.commands.items())
        else:
            yield name, cmd


def test_every_option_has_help():
    missing = [f"port {path} {p.opts[0]}" for path, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, missing


@pytest.mark.parametrize("option", ["--device", "--dtype", "--attention-backend", "--json", "--progress", "-o"])
def test_one_spelling_one_meaning(option: str):
    """The same option takes the same values everywhere (`port convert --dtype` is a storage dtype,
    documented apart)."""
    seen = {}
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and option in p.opts and not (path == "convert" and option == "--dtype"):
                kind = type(p.type).__name__, tuple(getattr(p.type, "choices", ()) or ())
                seen[path] = kind
    assert len(seen) >= 2 or option == "-o" and len(seen) == 2, seen
    assert len(set(seen.values())) == 1, seen


def test_out_is_the_output_option_of_convert_and_generate():
    for path, cmd in _commands():
        if path in ("convert", "generate"):
            (opt,) = [p for p in cmd.params if isinstance(p, click.Option) and "--out" in p.opts]
            assert "-o" in opt.opts


def test_renamed_options_still_work_and_say_so(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:  # --frames -> --num-frames; the family error comes after the warning
        main(["ssim-refs", "generate", "no-such-family", "--frames", "5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "warning: --frames is deprecated; use --num-frames" in err and "unknown model family" in err
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--prompt", "p", "--output", "a.mp4", "--out", "b.mp4"])
    assert e.value.code == 2 and "give only --out" in capsys.readouterr().err


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [
    ["--num-frames", "6"], ["--height", "30"], ["--steps", "0"], ["--device", "gpu"], ["--dtype", "fp8"],
    ["--seed", "-1"],
])
def test_bad_generate_arguments_fail_before_torch(args: list[str], tmp_path: Path):
    """Checked against the family's geometry (the repo's model_index.json names its pipeline)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    r = _child("import sys\nfrom vidport.porting.cli import main\n"
               f"try:\n    main(['generate', {str(repo)!r}, '--prompt', 'a cat', *{args!r}])\n"
               "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)")
    assert r.stdout.split() == ["exit", "2", "False"], (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_unknown_attention_backend_lists_the_names(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--prompt", "p", "--attention-backend", "flash"])
    assert e.value.code == 2
    assert "sdpa-math" in capsys.readouterr().err


def test_quiet_and_verbose_contradict(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-q", "-v", "info"])
    assert e.value.code == 2


def test_info_lists_families_and_backends(capsys):
    main(["info", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert {"name": "wan2.1-t2v", "presets": ["1.3b", "14b", "tiny"],
            "components": ["transformer", "vae", "text_encoder"]}.items() <= data["families"][0].items()
    runs = {b["name"]: b["runs_here"] for b in data["attention_backends"]}
    assert runs["sdpa-math"] and not runs["flash-attn-4"]  # CPU
    main(["info"])
    assert "wan2.1-t2v" in capsys.readouterr().out


def test_diff_keys_exits_1_on_an_incomplete_map(tmp_path: Path, capsys):
    """A map that leaves target keys unfilled is not an answer a script may take as success."""
    with pytest.raises(SystemExit) as e:
        main(["diff-keys", str(RELEASE), "native:wan2.1-t2v-tiny/vae", "--json"])
    assert e.value.code == 1
    assert json.loads(capsys.readouterr().out)["complete"] is False


def test_parity_on_a_damaged_repo_is_bad_input(tmp_path: Path, capsys):
    """A truncated safetensors in --weights is exit 2 and one line naming the file, not a diffusers
    traceback with exit 1 (the code of a real divergence)."""
    from vidport.parity.repos import converted_tiny_repo

    repo, _ = converted_tiny_repo(tmp_path / "tiny", "wan2.1-t2v")
    weights = repo / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SystemExit) as e:
        main(["parity", "wan2.1-t2v", "--weights", str(repo)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and str(weights) in err and "truncated" in err

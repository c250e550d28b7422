"""Where a run's PNGs go (nst_client.output), for nst-client and nst-stylize: written whole or not at all,
the final image saved elsewhere when its path fails, and a failed checkpoint a warning, not the run's end.

A full disk is a 256 KiB tmpfs filled by the test, where this process may mount one; the other failures are
real ones made in the test (a folder where a file goes, a folder that is not there)."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import tempfile
import types

import PIL.Image
import pytest
from helpers import make_image, png_bytes

from nst_client import chunked, errors, output
from nst_client import cli as client_cli
from nst_model import cli as stylize_cli
from nst_model import runner


@pytest.fixture
def png() -> bytes:
    return png_bytes(make_image(40, 56, seed=3))


@pytest.fixture
def spare(tmp_path, monkeypatch) -> pathlib.Path:
    """The system's temporary folder, as the fallback sees it, made a fresh one for the test."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def small_fs(tmp_path) -> pathlib.Path:
    """A 256 KiB tmpfs: a disk the test can fill. Skipped where this process may not mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here: cannot make a small filesystem to fill")
    if done.returncode:
        pytest.skip(f"cannot mount a 256 KiB tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(folder: pathlib.Path) -> None:
    """Write to `folder` until its filesystem is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def left_over(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---- nst_client.output ---------------------------------------------------------------------------


def test_a_write_that_fails_leaves_the_previous_file_whole(tmp_path, png, monkeypatch):
    target = tmp_path / "out.png"
    output.write_png(target, b"previous")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the disk says it is full only when the data must reach it
    with pytest.raises(OSError, match="No space left on device"):
        output.write_png(target, png)
    assert target.read_bytes() == b"previous" and left_over(tmp_path) == []
    monkeypatch.undo()
    link = tmp_path / "link.png"
    link.symlink_to(target)
    output.write_png(link, png)
    assert link.is_symlink() and target.read_bytes() == png and left_over(tmp_path) == []


def test_an_image_its_path_cannot_take_goes_to_the_temporary_folder(tmp_path, png, spare):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the output's folder should be")
    saved = output.save(blocker / "out.png", png)
    assert saved.path.parent == spare and saved.path.name.startswith("out-") and saved.path.suffix == ".png"
    assert saved.path.read_bytes() == png
    assert saved.problem == f"cannot write {blocker / 'out.png'}: Not a directory"
    assert saved.outcome("the image") == f"{saved.problem}; wrote the image to {saved.path} instead"
    assert output.save(tmp_path / "fine.png", png) == (tmp_path / "fine.png", None)


def test_the_current_folder_is_next_and_then_the_image_is_said_lost(tmp_path, png, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    monkeypatch.chdir(tmp_path)
    saved = output.save(tmp_path / "gone" / "out.png", png)
    assert saved.path.parent == tmp_path and saved.path.read_bytes() == png
    monkeypatch.setattr(output, "fallback_folders", lambda: [tmp_path / "gone", tmp_path / "also-gone"])
    lost = output.save(tmp_path / "gone" / "out.png", png)
    assert lost.path is None
    assert lost.outcome("the image") == (
        f"cannot write {tmp_path / 'gone' / 'out.png'}: No such file or directory, nor in "
        f"{tmp_path / 'gone'} (No such file or directory) or {tmp_path / 'also-gone'} (No such file or directory)"
        "; the image is lost"
    )


def test_a_full_disk_keeps_the_image_elsewhere(small_fs, png, spare):
    target = small_fs / "out.png"
    output.write_png(target, b"an earlier run's image")
    fill(small_fs)
    saved = output.save(target, png)
    assert saved.problem == f"cannot write {target}: No space left on device"
    assert saved.path.parent == spare and saved.path.read_bytes() == png
    assert target.read_bytes() == b"an earlier run's image" and left_over(small_fs) == []


def test_a_checkpoint_that_fails_is_one_warning_and_later_ones_are_written(tmp_path, png):
    out = tmp_path / "out.png"
    (tmp_path / "out_0002.png").mkdir()
    (tmp_path / "out_0004.png").mkdir()
    warnings = []
    checkpoints = output.Checkpoints(out, warnings.append)
    for steps in (2, 4, 6):
        checkpoints(steps, png)
    assert warnings == [f"cannot write the checkpoint {tmp_path / 'out_0002.png'}: Is a directory; the run goes on"]
    assert (tmp_path / "out_0006.png").read_bytes() == png and left_over(tmp_path) == []


# ---- the command lines, with a stand-in for the model -------------------------------------------


class StandIn:
    """A client (or in-process stylizer) whose run calls the checkpoints a chunked run would, does
    `meanwhile` (a disk filling up, say) and returns `png`; or is interrupted after `interrupt_at` steps."""

    def __init__(self, png: bytes, meanwhile=lambda: None, interrupt_at: int | None = None):
        self.png, self.meanwhile, self.interrupt_at = png, meanwhile, interrupt_at

    def run(self, content, styles, *, checkpoint=None, checkpoint_every=0, **options):
        for steps in range(checkpoint_every, 7, checkpoint_every) if checkpoint else ():
            checkpoint(steps, self.png)
        self.meanwhile()
        if self.interrupt_at is not None:
            raise chunked.Interrupted(self.interrupt_at, self.png)
        image = PIL.Image.new("RGB", (56, 40))
        return types.SimpleNamespace(png=self.png, image=image, losses={"loss": 1.0}, model_version=1)

    def close(self) -> None:
        pass


@pytest.fixture
def image_files(tmp_path) -> list[str]:
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(png_bytes(make_image(40, 56, seed=1)))
    style.write_bytes(png_bytes(make_image(48, 48, seed=2)))
    return [str(content), str(style)]


def nst_client(monkeypatch, capfd, stand_in: StandIn, *argv: object) -> tuple[int, list[str]]:
    monkeypatch.setattr(client_cli, "make_client", lambda args: stand_in)
    code = client_cli.main([str(a) for a in argv])
    return code, capfd.readouterr().err.splitlines()


def nst_stylize(monkeypatch, capfd, stand_in: StandIn, *argv: object) -> tuple[int, list[str]]:
    monkeypatch.setattr(runner, "load", lambda path: stand_in)
    code = stylize_cli.main([*map(str, argv), "--model", "stand-in", "-q"])
    return code, capfd.readouterr().err.splitlines()


@pytest.fixture(params=["nst-client", "nst-stylize"])
def command(request, monkeypatch, capfd):
    """Either command line, run in this process with a stand-in model: (exit code, stderr lines)."""
    if request.param == "nst-client":
        return lambda stand_in, *argv: nst_client(monkeypatch, capfd, stand_in, *argv)
    return lambda stand_in, *argv: nst_stylize(monkeypatch, capfd, stand_in, *argv)


def test_cli_a_failed_checkpoint_is_a_warning_and_the_run_goes_on(command, request, tmp_path, png, image_files):
    out = tmp_path / "out.png"
    (tmp_path / "out_0002.png").mkdir()
    code, err = command(StandIn(png), *image_files, "-o", out, "--save-every", "2", "-q")
    assert code == 0, err
    name = request.node.callspec.params["command"]
    warning = (
        f"{name}: warning: cannot write the checkpoint {tmp_path / 'out_0002.png'}: Is a directory; the run goes on"
    )
    assert [line for line in err if "warning" in line] == [warning] and "Traceback" not in "\n".join(err)
    assert out.read_bytes() == (tmp_path / "out_0004.png").read_bytes() == png


def test_cli_an_output_that_fails_at_the_end_is_saved_elsewhere(command, request, tmp_path, png, image_files, spare):
    out = tmp_path / "out.png"
    code, err = command(StandIn(png, meanwhile=out.mkdir), *image_files, "-o", out, "-q")
    assert code == errors.EXIT_BAD_INPUT
    [line] = err
    [elsewhere] = spare.iterdir()
    name = request.node.callspec.params["command"]
    assert line == f"{name}: error: cannot write {out}: Is a directory; wrote the image to {elsewhere} instead"
    assert elsewhere.read_bytes() == png


def test_cli_a_disk_full_at_the_end_keeps_the_image(command, request, small_fs, png, image_files, spare):
    out = small_fs / "out.png"
    code, err = command(StandIn(png, meanwhile=lambda: fill(small_fs)), *image_files, "-o", out, "-q")
    assert code == errors.EXIT_BAD_INPUT
    [elsewhere] = spare.iterdir()
    name = request.node.callspec.params["command"]
    assert err == [
        f"{name}: error: cannot write {out}: No space left on device; wrote the image to {elsewhere} instead"
    ]
    assert elsewhere.read_bytes() == png and not out.exists() and left_over(small_fs) == []


def test_cli_ctrl_c_keeps_the_image_when_its_checkpoint_path_fails(command, tmp_path, png, image_files, spare):
    out = tmp_path / "out.png"
    (tmp_path / "out_0003.png").mkdir()
    code, err = command(StandIn(png, interrupt_at=3), *image_files, "-o", out, "-q")
    assert code == errors.EXIT_INTERRUPTED
    [elsewhere] = spare.iterdir()
    failed = f"cannot write {tmp_path / 'out_0003.png'}: Is a directory"
    assert f"{failed}; wrote the image after 3 steps to {elsewhere} instead" in "\n".join(err)
    assert elsewhere.read_bytes() == png


@pytest.mark.slow
def test_stylize_runs_on_past_a_checkpoint_it_cannot_write(tmp_path, exported, image_files):
    """The real chunk loop and model: out_0002.png is a folder; the run still ends with out.png, exit 0."""
    out = tmp_path / "out.png"
    (tmp_path / "out_0002.png").mkdir()
    code = "import sys; from nst_model.cli import main; sys.exit(main())"
    args = [*image_files, "-o", str(out), "--max-dim", "32", "--steps", "4", "--save-every", "2", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--model", str(exported)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    warning = f"nst-stylize: warning: cannot write the checkpoint {tmp_path / 'out_0002.png'}: Is a directory"
    assert warning in done.stderr and "Traceback" not in done.stderr
    assert out.read_bytes() == (tmp_path / "out_0004.png").read_bytes()

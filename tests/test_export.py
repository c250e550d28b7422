"""nst-export: versioned layout, warmup requests, export info, and the server-way check."""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import pathlib
import re
import subprocess
import threading
import time

import pytest
import tensorflow as tf
from helpers import quiet_env, script
from tensorflow.core.protobuf import saved_model_pb2

from nst_client import chunked
from nst_export import cli as export_cli
from nst_export import exporter
from nst_model.options import DEFAULTS
from nst_model.vgg import sha256


def test_layout_warmup_and_info(exported, weights_file):
    assert exported.name == "1"
    assert (exported / "saved_model.pb").is_file()
    requests = exporter.read_warmup(exported / exporter.WARMUP_FILE)
    assert {r.model_spec.name for r in requests} == {"nst"}
    assert {r.model_spec.signature_name for r in requests} == {"decode", "pixels", "serving_default"}
    # Every call pattern of the chunk loop once, for each optimiser: the fresh and the resumed pixels
    # call, with the output filters the loop uses, so that no real request meets an executor to build.
    assert [r.model_spec.signature_name for r in requests].count("decode") == 1
    pixels = [r for r in requests if r.model_spec.signature_name == "pixels"]
    plain = [r for r in pixels if "mask" not in r.inputs]
    for optimizer in ("lbfgs", "adam"):
        fresh, later = [r for r in plain if ("optimizer" in r.inputs) == (optimizer == "adam")]
        assert "style" in fresh.inputs and "image" not in fresh.inputs
        assert set(chunked.TARGETS) <= set(fresh.output_filter)
        assert "style" not in later.inputs and set(chunked.state_names(optimizer)) <= set(later.inputs)
        assert set(chunked.state_names(optimizer)) <= set(later.output_filter)
    # A masked run as the command lines send it (mask and mask_styles), one call and chunked.
    masked = [(r.model_spec.signature_name, "style" in r.inputs) for r in requests if "mask" in r.inputs]
    assert masked == [("serving_default", True), ("pixels", True), ("pixels", False)]
    assert all("mask_styles" in r.inputs for r in requests if "mask" in r.inputs)
    for request in requests:  # tiny: the server replays them at load, with no deadline
        if "max_dim" in request.inputs:
            assert tf.make_ndarray(request.inputs["max_dim"]) == 16
    assert all(tf.make_ndarray(r.inputs["content"]).shape == (1, 16, 16, 3) for r in pixels)
    info = json.loads((exported / "assets.extra" / exporter.INFO_FILE).read_text())
    assert info["weights_sha256"] == sha256(weights_file)
    assert info["tensorflow"] == tf.__version__
    assert info["defaults"] == json.loads(json.dumps(DEFAULTS))  # vectors come back as lists
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_no_keras_objects_in_the_exported_graph(exported):
    """Only plain variables: a Keras layer in the module breaks the server's Session restore."""
    model = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    nodes = model.meta_graphs[0].object_graph_def.nodes
    assert not [n for n in nodes if "keras" in n.user_object.identifier.lower()]
    assert sum(n.HasField("variable") for n in nodes) == 28  # 14 convolutions to block5_conv2, kernel + bias


def test_signature_defaults_are_in_the_graph(exported):
    description = exporter.describe(exported)
    assert "in  steps           int32    default: 300" in description
    assert "in  content         string   required" in description
    assert "in  adam_step       int32    default: 0" in description
    assert "in  init            string   default: content" in description
    assert "in  style_layer_weights float32  default: 1 1 1 1 1" in description
    assert "in  preserve_colors bool     default: False" in description


def test_versions_count_up_and_an_explicit_one_never_overwrites(tmp_path, weights_file):
    model_dir = tmp_path / "nst"
    (model_dir / "3").mkdir(parents=True)
    (model_dir / "notes").mkdir()
    assert exporter.next_version(model_dir) == 4
    with pytest.raises(FileExistsError, match="already exists"):  # refused before any work
        exporter.export(model_dir, version=3, weights=weights_file)


def test_a_failed_export_leaves_no_version_behind(tmp_path, weights_file, monkeypatch):
    """Whatever fails between staging and publishing (here the write itself), no version and no staging stay."""

    def broken(module, path, signatures):
        pathlib.Path(path, "saved_model.pb").write_bytes(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(exporter.tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        exporter.export(tmp_path / "nst", weights=weights_file)
    assert list((tmp_path / "nst").iterdir()) == []


def test_cli_reports_bad_weights_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model-dir", str(tmp_path / "nst"), "--weights", str(tmp_path / "missing.h5")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.h5 (from --weights): no such file" in err


@pytest.mark.parametrize("flag", ["auto", "float32", "bfloat16"])
def test_cli_precision_auto_is_bfloat16_where_this_cpu_has_it(tmp_path, monkeypatch, capsys, flag):
    flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    fast = "amx_bf16" in flags or "avx512_bf16" in flags or bool(tf.config.list_physical_devices("GPU"))
    chosen = []

    def export(model_dir, version, weights, precision, limits, style_losses):
        chosen.append(precision)
        raise FileExistsError("stopped before exporting")

    monkeypatch.setattr(exporter, "export", export)
    with pytest.raises(SystemExit):
        export_cli.main(["--model-dir", str(tmp_path / "nst"), "--precision", flag])
    assert chosen == [("bfloat16" if fast else "float32") if flag == "auto" else flag]
    assert "stopped before exporting" in capsys.readouterr().err


# ---- staging folders a killed export leaves, and exports at the same time --------------------------


def held_lock(path: pathlib.Path) -> int:
    """A lock file locked as a live export holds it (a separate open file: the clean-up in this process cannot
    take it either)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_stale_staging_goes_and_a_live_export_keeps_its_own(tmp_path):
    model_dir = tmp_path / "nst"
    for name in (".staging-dead", ".3-staging-old", ".staging-live", "1", "notes"):
        (model_dir / name).mkdir(parents=True)
        (model_dir / name / "saved_model.pb").write_bytes(b"half a model")
    (model_dir / ".staging-dead.lock").touch()  # its export was killed: nothing holds the lock
    (model_dir / ".staging-orphan.lock").touch()  # killed before making its folder
    live = held_lock(model_dir / ".staging-live.lock")
    try:
        removed = exporter.remove_stale_staging(model_dir)
        assert sorted(p.name for p in removed) == [".3-staging-old", ".staging-dead"]
        assert sorted(p.name for p in model_dir.iterdir()) == [".staging-live", ".staging-live.lock", "1", "notes"]
        assert (model_dir / ".staging-live" / "saved_model.pb").exists()
    finally:
        os.close(live)
    exporter.remove_stale_staging(model_dir)  # its owner gone too
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "notes"]


def test_staging_is_locked_before_it_exists_and_removed_whole(tmp_path):
    staging, fd = exporter._stage(tmp_path)
    assert staging.is_dir() and staging.stat().st_mode & 0o777 == 0o755
    assert exporter.remove_stale_staging(tmp_path) == [] and staging.is_dir()  # held: a live export's
    exporter._unstage(staging, fd)
    assert list(tmp_path.iterdir()) == []


def staged(model_dir: pathlib.Path, mark: str) -> pathlib.Path:
    """A stand-in for a checked export: a staging folder holding a file that says whose it is."""
    folder = model_dir / f".staging-{mark}"
    folder.mkdir(parents=True)
    (folder / "mark").write_text(mark)
    return folder


def test_a_version_taken_meanwhile_moves_the_export_to_the_next_number(tmp_path, monkeypatch):
    model_dir = tmp_path / "nst"
    for taken in ("1", "2"):
        (staged(model_dir, taken)).rename(model_dir / taken)  # what other exports published meanwhile
    monkeypatch.setattr(exporter, "next_version", lambda model_dir: 1)  # the number as it was when first looked at
    assert exporter.publish(staged(model_dir, "late"), model_dir, None) == model_dir / "3"
    assert [(model_dir / v / "mark").read_text() for v in ("1", "2", "3")] == ["1", "2", "late"]
    # An explicit --version is never moved: taken meanwhile, the export is refused and its staging left to clean.
    late = staged(model_dir, "explicit")
    with pytest.raises(FileExistsError, match=r"nst/2 already exists; pick another --version or leave it out"):
        exporter.publish(late, model_dir, 2)
    assert (model_dir / "2" / "mark").read_text() == "2" and late.is_dir()


def test_exports_publishing_at_once_each_land_as_their_own_version(tmp_path, monkeypatch):
    """All of them look for the next number before any renames (a barrier makes sure), so all first pick 1."""
    model_dir = tmp_path / "nst"
    marks = [f"export{i}" for i in range(6)]
    folders = [staged(model_dir, mark) for mark in marks]
    everyone_looked = threading.Barrier(len(marks))
    looked, real = set(), exporter.next_version

    def next_version(model_dir):
        number = real(model_dir)
        if threading.get_ident() not in looked:
            looked.add(threading.get_ident())
            everyone_looked.wait(timeout=60)
        return number

    monkeypatch.setattr(exporter, "next_version", next_version)
    with concurrent.futures.ThreadPoolExecutor(len(marks)) as pool:
        published = list(pool.map(lambda folder: exporter.publish(folder, model_dir, None), folders))
    assert sorted(p.name for p in published) == [str(v) for v in range(1, len(marks) + 1)]
    assert [(path / "mark").read_text() for path in published] == marks


def nst_export(model_dir: pathlib.Path, weights: pathlib.Path) -> subprocess.Popen:
    command = [script("nst-export"), "--model-dir", model_dir, "--weights", weights]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet_env())


@pytest.mark.slow
def test_a_killed_export_is_cleaned_up_by_the_next(tmp_path, weights_file):
    """nst-export killed mid-write (SIGKILL: no handler runs) leaves its staging folder; the next export removes
    it and keeps the one a live export holds. (Exports that race for a number: the publish tests above.)"""
    model_dir = tmp_path / "nst"
    killed = nst_export(model_dir, weights_file)
    deadline = time.monotonic() + 600
    try:
        while not [p for p in model_dir.glob(".staging-*") if p.is_dir() and any(p.iterdir())]:  # writing
            assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
            time.sleep(0.05)
    finally:
        killed.kill()
        killed.wait()
    [left] = [p for p in model_dir.glob(".staging-*") if p.is_dir()]
    staged(model_dir, "live")
    live = held_lock(model_dir / ".staging-live.lock")
    try:
        process = nst_export(model_dir, weights_file)
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr
        assert re.search(r"exported (\S+) ", stdout)[1] == str(model_dir / "1")
        assert not left.exists()
        assert sorted(p.name for p in model_dir.iterdir()) == [".staging-live", ".staging-live.lock", "1"]
        exporter.verify(model_dir / "1")
    finally:
        os.close(live)

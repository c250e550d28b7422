"""nst-export: versioned layout, warmup requests, export info, and the server-way check."""

from __future__ import annotations

import json
import pathlib

import pytest
import tensorflow as tf
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
    for optimizer in ("lbfgs", "adam"):
        fresh, later = [r for r in pixels if ("optimizer" in r.inputs) == (optimizer == "adam")]
        assert "style" in fresh.inputs and "image" not in fresh.inputs
        assert set(chunked.TARGETS) <= set(fresh.output_filter)
        assert "style" not in later.inputs and set(chunked.state_names(optimizer)) <= set(later.inputs)
        assert set(chunked.state_names(optimizer)) <= set(later.output_filter)
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


@pytest.mark.slow
def test_versions_count_up_and_never_overwrite(tmp_path, weights_file):
    model_dir = tmp_path / "nst"
    (model_dir / "3").mkdir(parents=True)
    (model_dir / "notes").mkdir()
    assert exporter.next_version(model_dir) == 4
    with pytest.raises(FileExistsError, match="already exists"):
        exporter.export(model_dir, version=3, weights=weights_file)
    assert exporter.export(model_dir, weights=weights_file).name == "4"


@pytest.mark.slow
def test_a_failed_check_leaves_no_version_behind(tmp_path, weights_file, monkeypatch):
    def broken(path):
        raise RuntimeError("warmup failed")

    monkeypatch.setattr(exporter, "verify", broken)
    with pytest.raises(RuntimeError, match="warmup failed"):
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

"""The exported graphs cannot touch the server's disk or network, whatever a request holds."""

from __future__ import annotations

from tensorflow.core.protobuf import saved_model_pb2

# Op types that read, write or list files, or reach other machines.
FORBIDDEN = {
    "ReadFile", "WriteFile", "MatchingFiles", "MatchingFilesDataset", "FixedLengthRecordDataset",
    "TFRecordDataset", "TextLineDataset", "FixedLengthRecordReader", "TFRecordReader", "TextLineReader",
    "WholeFileReader", "WholeFileReaderV2", "IdentityReader", "ImmutableConst", "SaveV2", "Save", "SaveSlices",
    "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec",
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "WriteAudioSummary", "WriteGraphSummary", "WriteHistogramSummary",
    "WriteImageSummary", "WriteRawProtoSummary", "WriteScalarSummary", "WriteSummary", "CreateSummaryFileWriter",
    "CreateSummaryDbWriter", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "Print", "PrintV2",
    "Recv", "Send", "_Recv", "_Send", "CollectiveBcastRecv", "CollectiveBcastSend", "CollectiveGather",
    "CollectiveReduce", "RpcClient", "RpcCall", "LoadAndRemapMatrix", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "LookupTableImport", "SnapshotDataset", "SaveDataset", "LoadDataset",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "FileSystemSetConfiguration", "IteratorFromStringHandle",
}  # fmt: skip


def _reachable_op_types(meta_graph, outputs: list[str]) -> set[str]:
    """Op types of every node `outputs` depend on, following calls into functions."""
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    seen_functions: set[str] = set()
    types: set[str] = set()

    def visit_function(name: str) -> None:
        if name in seen_functions or name not in functions:
            return
        seen_functions.add(name)
        for node in functions[name].node_def:
            visit_node(node)

    def visit_node(node) -> None:
        types.add(node.op)
        visit_function(node.op)  # a function called directly as an op
        for attr in node.attr.values():
            for called in [attr.func.name, *(f.name for f in attr.list.func)]:
                visit_function(called)

    stack = list(outputs)
    seen_nodes: set[str] = set()
    while stack:
        name = stack.pop().lstrip("^").split(":")[0]
        if name in seen_nodes:
            continue
        seen_nodes.add(name)
        visit_node(nodes[name])
        stack.extend(nodes[name].input)
    return types


def test_no_file_system_or_network_op_is_reachable_from_any_signature(exported):
    model = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    (meta_graph,) = model.meta_graphs
    checked = 0
    for name, signature in meta_graph.signature_def.items():
        if name.startswith("__"):
            continue
        types = _reachable_op_types(meta_graph, [t.name for t in signature.outputs.values()])
        if name == "limits":  # constants only
            assert types <= {"Const", "Identity", "StatefulPartitionedCall", "PartitionedCall", "NoOp"}, types
            checked += 1
            continue
        assert "Conv2D" in types or name == "decode", name  # the walk does reach into the functions
        assert {"DecodePng", "DecodeJpeg", "DecodeGif"} <= types or name == "pixels", name  # the decoders too
        assert not types & FORBIDDEN, (name, sorted(types & FORBIDDEN))
        checked += 1
    assert checked == 4


def test_the_walk_finds_the_savers_file_ops(exported):
    """The graph does hold file ops, the saver's, which the server runs once at load: the same
    walk started from the restore op finds them, so it would find them behind a signature."""
    model = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    (meta_graph,) = model.meta_graphs
    assert "RestoreV2" in _reachable_op_types(meta_graph, [meta_graph.saver_def.restore_op_name])

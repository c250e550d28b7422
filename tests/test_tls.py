"""nst-client over TLS to nst-devserver: the same PNG as in-process, and one-line failures
(exit 3) for a plaintext client, an untrusted certificate and a missing client certificate.

Certificates are made at test time with the openssl command; the servers run in-process on the
session's Session.
"""

from __future__ import annotations

import pathlib

import grpc
import pytest
from helpers import OPENSSL, make_certificate, serving_default

from nst_client import NSTClient, cli, errors
from nst_devserver import serving as ds


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    if OPENSSL is None:
        pytest.skip("no openssl command to make test certificates with")
    folder = tmp_path_factory.mktemp("tls")
    return {
        "server": make_certificate(folder, "server", "localhost"),
        "impostor": make_certificate(folder, "impostor", "localhost"),  # same name, another key
        "client": make_certificate(folder, "client", "nst-client"),
    }


def start(serving, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, str]:
    server, port = ds.serve(ds.Model("nst", {1: serving}), port=0, credentials=credentials)
    # 127.0.0.1 rather than localhost, which may resolve to ::1 first, where nothing listens
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tls_server(serving, certs):
    cert, key = certs["server"]
    server, address = start(serving, ds.server_credentials(str(cert), str(key)))
    yield address
    server.stop(grace=None)


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_tls_with_the_servers_ca_gives_the_in_process_png(
    tls_server, certs, serving, capsys, tmp_path, content_png, style_png
):
    content, style, output = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
    content.write_bytes(content_png)
    style.write_bytes(style_png)
    code, err = run_cli(
        capsys,
        "--server",
        tls_server,
        "--ca-file",
        certs["server"][0],
        content,
        style,
        "-o",
        output,
        "--steps",
        "2",
        "--chunk",
        "1",
        "--max-dim",
        "32",
    )
    assert code == errors.EXIT_OK, err
    assert output.read_bytes() == serving_default(serving, content_png, style_png, steps=2, max_dim=32)


def test_plaintext_and_untrusted_clients_fail_in_one_line(tls_server, certs, capsys):
    untrusted = "not signed by a CA this client trusts: pass that CA with --ca-file\n"
    cases = (
        ((), "if the server uses TLS, pass --tls or --ca-file\n"),
        (("--ca-file", certs["impostor"][0]), untrusted),
        (("--tls",), untrusted),  # the system's roots do not know a self-signed certificate
    )
    for flags, hint in cases:
        code, err = run_cli(capsys, "--server", tls_server, "--connect-timeout", "1", *flags, "status")
        assert code == errors.EXIT_UNREACHABLE, (flags, err)
        assert err.startswith(f"nst-client: error: UNAVAILABLE: cannot reach a model server at {tls_server} within 1 s")
        assert err.endswith(hint) and err.count("\n") == 1, err


def test_a_tls_client_to_a_plaintext_server_is_told_so(serving, certs, capsys):
    server, address = start(serving)
    try:
        code, err = run_cli(
            capsys,
            "--server",
            address,
            "--connect-timeout",
            "1",
            "--ca-file",
            certs["server"][0],
            "status",
        )
    finally:
        server.stop(grace=None)
    assert code == errors.EXIT_UNREACHABLE
    assert err.endswith("the server does not speak TLS: drop --tls and --ca-file\n") and err.count("\n") == 1


def test_mutual_tls(serving, certs, capsys):
    (server_cert, server_key), (client_cert, client_key) = certs["server"], certs["client"]
    server, address = start(serving, ds.server_credentials(str(server_cert), str(server_key), str(client_cert)))
    try:
        with NSTClient(address, ca_file=server_cert, client_cert=client_cert, client_key=client_key) as client:
            assert [s.version for s in client.status()] == [1]
        code, err = run_cli(capsys, "--server", address, "--connect-timeout", "1", "--ca-file", server_cert, "status")
        assert code == errors.EXIT_UNREACHABLE, err
        assert err.startswith("nst-client: error: UNAVAILABLE: ") and err.count("\n") == 1
        assert err.endswith("pass one it trusts with --client-cert and --client-key\n")
    finally:
        server.stop(grace=None)


def test_tls_files_are_checked_before_connecting(capsys, tmp_path):
    code, err = run_cli(capsys, "--ca-file", tmp_path / "absent.pem", "status")
    assert (code, err) == (
        errors.EXIT_BAD_INPUT,
        f"nst-client: error: cannot read the TLS file {tmp_path / 'absent.pem'}: No such file or directory\n",
    )
    code, err = run_cli(capsys, "--client-cert", tmp_path / "c.pem", "status")
    assert code == errors.EXIT_BAD_INPUT and "give both or neither" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["--rest", "http://localhost:8501", "--tls", "status"])
    assert info.value.code == errors.EXIT_BAD_INPUT

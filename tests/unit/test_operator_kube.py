"""kube.py: kubeconfigs are read the way kubectl reads them; paths are built correctly."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from aiguard_operator import kube


def write(path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dev",
                "contexts": [
                    {
                        "name": "dev",
                        "context": {"cluster": "c", "user": "u", "namespace": "team-a"},
                    },
                    {"name": "other", "context": {"cluster": "c", "user": "u"}},
                ],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_inline_data_and_the_context_namespace(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        {
            "client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode(),
        },
        {
            "server": "https://127.0.0.1:6443/",
            "certificate-authority-data": base64.b64encode(b"CA").decode(),
        },
    )

    creds = kube.from_kubeconfig(path)

    assert creds.server == "https://127.0.0.1:6443"
    assert (creds.ca_data, creds.cert_data, creds.key_data) == ("CA", b"CERT", b"KEY")
    assert creds.namespace == "team-a"
    assert kube.from_kubeconfig(path, context="other").namespace == "default"


def test_relative_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        {"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key", "token": "t"},
        {"server": "https://h", "certificate-authority": "pki/ca.crt"},
    )

    creds = kube.from_kubeconfig(path)

    assert creds.ca_file == str(tmp_path / "pki" / "ca.crt")
    assert creds.cert_file == str(tmp_path / "pki" / "admin.crt")
    assert creds.key_file == "/abs/admin.key"
    assert creds.token == "t"


def test_exec_plugins_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = write(tmp_path / "config", {"exec": {"command": "aws"}}, {"server": "https://h"})

    with pytest.raises(kube.KubeConfigError, match="exec or auth-provider plugin"):
        kube.from_kubeconfig(path)


def test_unknown_context_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path / "config", {"token": "t"}, {"server": "https://h"})

    with pytest.raises(kube.KubeConfigError, match="context 'prod' not found"):
        kube.from_kubeconfig(path, context="prod")
    with pytest.raises(kube.KubeConfigError, match="does not exist"):
        kube.from_kubeconfig(tmp_path / "missing")


def test_merged_kubeconfigs_first_definition_wins(tmp_path: Path) -> None:
    first = write(tmp_path / "a", {"token": "first"}, {"server": "https://first"})
    second = write(tmp_path / "b", {"token": "second"}, {"server": "https://second"})

    creds = kube.from_kubeconfig(f"{first}:{second}")

    assert (creds.server, creds.token) == ("https://first", "first")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"plural": "configmaps", "namespace": "ns", "name": "x"},
            "/api/v1/namespaces/ns/configmaps/x",
        ),
        ({"plural": "namespaces"}, "/api/v1/namespaces"),
        (
            {
                "group": "aiguard.dev",
                "version": "v1alpha1",
                "plural": "aipolicies",
                "namespace": "ns",
                "name": "p",
                "subresource": "status",
            },
            "/apis/aiguard.dev/v1alpha1/namespaces/ns/aipolicies/p/status",
        ),
    ],
)
def test_paths(kwargs: dict[str, str], expected: str) -> None:
    assert kube.path(**kwargs) == expected

"""Gateway settings that guard the service: local servers stay on loopback, /metrics keyed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tiered.errors import ConfigError
from tiered.serve import build_app
from tiered.serve.config import LocalServerSettings, load_gateway_config

from .test_serve_unit import Scripted, make_gateway, stage


@pytest.mark.parametrize(
    "args", [["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--port", "80"], ["--model", "x.gguf"]]
)
def test_extra_args_cannot_move_a_local_server_off_loopback(args: list[str]) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        LocalServerSettings(extra_args=args)


def test_other_extra_args_are_kept() -> None:
    assert LocalServerSettings(extra_args=["--n_batch", "64"]).extra_args == ["--n_batch", "64"]


def test_a_gateway_file_naming_host_in_extra_args_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "servers:\n  local:\n    extra_args: ['--host', '0.0.0.0']\n"
        "cascades:\n  c:\n    stages:\n      - {name: a, model: {kind: label_column, field: y}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="extra_args") as info:
        load_gateway_config(path)
    assert "gateway.yaml" in str(info.value)


@pytest.mark.parametrize("protect", [True, False])
def test_metrics_need_a_key_exactly_when_protect_metrics_is_set(protect: bool) -> None:
    gw = make_gateway(
        {"small": Scripted("small")},
        [{"name": "casc", "stages": [stage("small")]}],
        auth={"protect_metrics": protect},
        keys={"sk-test": "tester"},
    )
    with TestClient(build_app(gw)) as client:
        anonymous = client.get("/metrics")
        keyed = client.get("/metrics", headers={"authorization": "Bearer sk-test"})
    assert keyed.status_code == 200 and "tiered_" in keyed.text
    assert anonymous.status_code == (401 if protect else 200)

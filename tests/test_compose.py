"""compose.yaml stays in step with the code: its commands parse, its settings resolve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aexec.cli.main import build_parser
from aexec.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_aexec_service_command_is_a_valid_cli_invocation() -> None:
    services = compose()["services"]
    aexec_services = {n: s for n, s in services.items() if s.get("build") == "."}
    assert {"coordinator", "worker-1", "worker-2"} <= set(aexec_services)
    for name, service in aexec_services.items():
        args = build_parser().parse_args(service["command"])
        assert callable(args.handler), name
        for module in getattr(args, "modules", None) or []:
            assert (ROOT / module).is_file(), f"{name} loads a missing file {module}"


def test_the_services_settings_resolve_to_the_production_backends() -> None:
    services = compose()["services"]
    env = {k: str(v) for k, v in services["coordinator"]["environment"].items()}
    settings = Settings.resolve(environ=env)
    assert settings.broker is not None and "@rabbitmq:5672" in settings.broker
    assert settings.store_url.startswith("postgresql://")
    assert settings.objects_url.startswith("s3://")
    for dependency in ("rabbitmq", "postgres", "s3"):
        assert "healthcheck" in services[dependency], dependency

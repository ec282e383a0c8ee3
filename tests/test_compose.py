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


def test_every_dependency_and_volume_named_exists() -> None:
    data = compose()
    services = data["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on a missing service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts a missing file {source}"
            else:
                assert source in (data.get("volumes") or {}), f"{name}: volume {source}"


def test_aexec_services_are_checked_ready_on_their_metrics_port() -> None:
    services = compose()["services"]
    for name in ("coordinator", "worker-1", "worker-2"):
        service = services[name]
        args = build_parser().parse_args(service["command"])
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://localhost:{args.metrics_port}/readyz" in probe, name


def test_prometheus_scrapes_the_coordinator_and_every_worker() -> None:
    services = compose()["services"]
    [mount] = services["prometheus"]["volumes"]
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{build_parser().parse_args(services[name]['command']).metrics_port}"
        for name in services
        if services[name].get("build") == "."
    }
    assert targets == expected


def test_the_s3_service_is_a_server_with_persistence_and_its_bucket_is_made() -> None:
    services = compose()["services"]
    s3 = services["s3"]
    assert s3["image"].startswith("minio/minio:")
    assert any(volume.endswith(":/data") for volume in s3["volumes"])
    assert "/data" in s3["command"]
    env = services["coordinator"]["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert env["AWS_ACCESS_KEY_ID"] == s3["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == s3["environment"]["MINIO_ROOT_PASSWORD"]
    bucket = Settings.resolve(environ={"AEXEC_OBJECTS": env["AEXEC_OBJECTS"]}).objects_url
    assert bucket.split("/")[2] in " ".join(services["s3-bucket"]["entrypoint"])

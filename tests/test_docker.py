"""Docker does not run on the CI machine: check what can be checked without an engine."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_parses_and_names_the_services():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"postgres", "prefect-server", "worker"}
    assert compose["services"]["worker"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert "artifacts:/artifacts" in compose["services"]["worker"]["volumes"]
    ports = compose["services"]["prefect-server"]["ports"]
    assert all(p.startswith("127.0.0.1:") for p in ports), "the server binds to loopback unless configured otherwise"


def test_dockerfile_installs_through_the_makefile_target_ci_uses():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "RUN make install" in text
    for package in ("pipelines", "kg", "linking", "model", "flows"):
        assert f"COPY {package} ./{package}" in text
    assert "install:" in (ROOT / "Makefile").read_text()

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


def test_docker_worker_registers_the_deployments_and_writes_to_the_volume():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    root = worker["environment"]["KALORA_ARTIFACT_ROOT"]
    assert f"artifacts:{root}" in worker["volumes"], "the flows' artifact root is the named volume"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert set(compose["volumes"]) >= {"pgdata", "artifacts"}
    # the worker's pool is the one every deployment in prefect.yaml targets
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {worker["environment"]["KALORA_WORK_POOL"]}
    # the entrypoint deploys from the directory the image copies prefect.yaml into, and is valid sh
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY prefect.yaml ./" in dockerfile and "WORKDIR /opt/kalora" in dockerfile
    script = ROOT / "docker" / "worker-entrypoint.sh"
    text = script.read_text()
    assert "cd /opt/kalora" in text and "prefect --no-prompt deploy --all" in text
    assert "prefect worker start --pool" in text
    import os
    import subprocess

    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    # no credentials in the compose file: the database password comes from the environment
    assert "${POSTGRES_PASSWORD" in (ROOT / "docker" / "compose.yaml").read_text()

"""Checks of the container setup: docker-compose.yml, the Dockerfiles, Prometheus and Grafana.

docker-compose.yml is validated against the Compose Specification's JSON
schema that the check-jsonschema package ships, and by `docker compose config`
where a Compose v2 CLI is installed. Neither needs a Docker engine. The other
tests check how the files fit together; no image is built and no container runs.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
DOCKERFILE_CPU = REPO_ROOT / "docker" / "Dockerfile"
DOCKERFILE_CUDA = REPO_ROOT / "docker" / "Dockerfile.cuda"
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO_ROOT / "docker" / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = REPO_ROOT / "docker" / "grafana" / "dashboards"
DASHBOARD_FILE = GRAFANA_DASHBOARDS / "e4srec.json"

SCHEMA_INSTALL_HINT = (
    "docker-compose.yml is validated against the Compose Specification schema that the "
    "check-jsonschema package ships; install it with "
    "`.venv/bin/python -m pip install check-jsonschema==0.39.0`"
)

E4SREC_SERVICES = ("e4srec", "e4srec-gpu")

# The metrics that the service exposes, by Prometheus type. The dashboard may
# query only these (histograms through their _bucket, _sum and _count series).
COUNTERS = {
    "e4srec_http_requests_total",
    "e4srec_bundle_loads_total",
    "e4srec_bundle_evictions_total",
    "e4srec_bundle_uploads_total",
    "e4srec_prefix_cache_hits_total",
    "e4srec_prefix_cache_misses_total",
    "e4srec_response_cache_hits_total",
    "e4srec_response_cache_misses_total",
    "e4srec_redis_errors_total",
    "e4srec_rejected_requests_total",
}
HISTOGRAMS = {
    "e4srec_http_request_duration_seconds",
    "e4srec_queue_wait_seconds",
    "e4srec_forward_duration_seconds",
    "e4srec_batch_size",
}
GAUGES = {"e4srec_queue_depth", "e4srec_resident_bundles"}
KNOWN_METRICS = COUNTERS | HISTOGRAMS | GAUGES
HISTOGRAM_SERIES = {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
QUERYABLE_SERIES = COUNTERS | GAUGES | HISTOGRAM_SERIES

# PromQL words that are not metric names: aggregation operators, keywords and functions.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "predict_linear", "rate", "resets", "round", "scalar", "sgn",
    "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def compose_spec_validator():
    """Build a validator for the Compose Specification JSON schema that check-jsonschema vendors."""
    try:
        import jsonschema

        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError as error:
        missing = error.name
    else:
        schema = json.loads((vendored / "compose-spec.json").read_text())
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        return validator_class(schema)
    pytest.fail(f"Python module {missing} was not found. {SCHEMA_INSTALL_HINT}", pytrace=False)


def schema_errors(document: dict) -> list[str]:
    errors = sorted(compose_spec_validator().iter_errors(document), key=lambda error: list(error.absolute_path))
    return [f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}" for error in errors]


# --- Compose file validity ---


def test_compose_file_matches_compose_spec(compose):
    errors = schema_errors(compose)

    assert errors == [], "docker-compose.yml does not match the Compose Specification:\n" + "\n".join(errors)


def test_compose_schema_rejects_unknown_key(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")

    errors = schema_errors(broken)

    assert any("helthcheck" in error for error in errors), errors


def find_compose_cli() -> list[str] | None:
    """Return the command of a Compose v2 CLI (the docker plugin or a standalone binary), if one is installed."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=60)
        major = result.stdout.strip().lstrip("v").split(".")[0]
        # docker-compose 1.x (Debian's package) predates the Compose
        # Specification features that this file uses, such as `name`.
        if result.returncode == 0 and major.isdigit() and int(major) >= 2:
            return command
    return None


@pytest.mark.parametrize(
    ("profiles", "expected_services"),
    [
        ([], {"e4srec", "redis", "prometheus", "grafana"}),
        (["gpu"], {"e4srec", "e4srec-gpu", "redis", "prometheus", "grafana"}),
    ],
)
def test_compose_cli_config_accepts_file(profiles, expected_services):
    cli = find_compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI is installed; test_compose_file_matches_compose_spec covers the schema")
    profile_options = [option for profile in profiles for option in ("--profile", profile)]

    result = subprocess.run(
        [*cli, "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE), *profile_options,
         "config", "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, f"`{shlex.join(cli)} config` rejected docker-compose.yml:\n{result.stderr}"
    assert set(json.loads(result.stdout)["services"]) == expected_services


# --- Services in docker-compose.yml ---


def test_every_service_has_healthcheck(compose):
    for name, service in compose["services"].items():
        healthcheck = service.get("healthcheck")

        assert healthcheck, f"service {name} has no healthcheck"
        assert healthcheck.get("test"), f"service {name} has a healthcheck without a test command"
        assert not healthcheck.get("disable", False), f"service {name} disables its healthcheck"


def test_e4srec_services_wait_for_healthy_redis(compose):
    for name in E4SREC_SERVICES:
        depends_on = compose["services"][name]["depends_on"]

        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_e4srec_healthcheck_probes_service_port(compose):
    for name in E4SREC_SERVICES:
        command = " ".join(compose["services"][name]["healthcheck"]["test"])

        assert "http://127.0.0.1:8000/" in command, name


def test_env_file_is_optional(compose):
    for name in E4SREC_SERVICES:
        env_files = compose["services"][name]["env_file"]

        assert {"path": ".env", "required": False} in env_files, name


def test_cpu_service_builds_default_dockerfile(compose):
    service = compose["services"]["e4srec"]

    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert "profiles" not in service, "the CPU service must start without a profile"
    assert any(str(port).endswith(":8000") for port in service["ports"])


def test_gpu_service_reserves_nvidia_gpu(compose):
    service = compose["services"]["e4srec-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]

    assert service["profiles"] == ["gpu"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices), devices
    assert service["environment"]["E4SREC_DEVICE"] == "cuda"


def host_ports(service: dict) -> set[str]:
    """Return the published host ports of a service, with ${VAR:-default} replaced by its default."""
    ports = set()
    for mapping in service.get("ports", []):
        resolved = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(mapping))
        ports.add(resolved.rsplit(":", 2)[-2])
    return ports


def test_cpu_and_gpu_services_publish_different_ports(compose):
    cpu_ports = host_ports(compose["services"]["e4srec"])
    gpu_ports = host_ports(compose["services"]["e4srec-gpu"])

    assert cpu_ports == {"8000"}
    assert gpu_ports and cpu_ports.isdisjoint(gpu_ports), (cpu_ports, gpu_ports)


def test_bundles_volume_mounted_at_image_adapters_dir(compose):
    assert "bundles" in compose["volumes"]
    for name, dockerfile in (("e4srec", DOCKERFILE_CPU), ("e4srec-gpu", DOCKERFILE_CUDA)):
        adapters_dir = dockerfile_env(dockerfile)["E4SREC_ADAPTERS_DIR"]

        assert f"bundles:{adapters_dir}" in compose["services"][name]["volumes"], name


def test_redis_persists_with_append_only_file(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]

    assert redis["image"].startswith("redis:7")
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ports" not in redis, "Redis must stay inside the compose network"


# --- Prometheus ---


def prometheus_targets(job: dict) -> set[str]:
    """Return the host:port targets of a scrape job, from static and DNS service discovery."""
    targets = set()
    for static in job.get("static_configs", []):
        targets.update(static["targets"])
    for dns in job.get("dns_sd_configs", []):
        targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    return targets


def test_prometheus_scrapes_e4srec_metrics():
    jobs = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    e4srec_jobs = [job for job in jobs if "e4srec:8000" in prometheus_targets(job)]

    assert e4srec_jobs, f"no scrape job targets e4srec:8000 in {PROMETHEUS_CONFIG}"
    for job in e4srec_jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]


def test_prometheus_also_scrapes_gpu_service():
    jobs = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]

    assert any("e4srec-gpu:8000" in prometheus_targets(job) for job in jobs)


def test_prometheus_service_loads_repository_config(compose):
    prometheus = compose["services"]["prometheus"]
    config_option = next(option for option in prometheus["command"] if option.startswith("--config.file="))
    config_path = config_option.split("=", 1)[1]

    assert f"./docker/prometheus/prometheus.yml:{config_path}:ro" in prometheus["volumes"]


# --- Grafana ---


def grafana_mounts(compose) -> dict[str, str]:
    """Map container paths to repository paths for Grafana's bind mounts."""
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source
    return mounts


def test_grafana_datasource_points_at_prometheus():
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    prometheus = [source for source in datasources if source["type"] == "prometheus"]

    assert len(prometheus) == 1
    assert prometheus[0]["url"] == "http://prometheus:9090"


def test_grafana_provisioning_matches_compose_mounts(compose):
    mounts = grafana_mounts(compose)
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "e4srec.yml")["providers"]
    dashboard_path = providers[0]["options"]["path"]

    home_dashboard = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]

    assert mounts.get("/etc/grafana/provisioning") == "./docker/grafana/provisioning"
    assert mounts.get(dashboard_path) == "./docker/grafana/dashboards"
    assert home_dashboard == f"{dashboard_path}/{DASHBOARD_FILE.name}"


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Return every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = []
    for panel in dashboard_panels(dashboard):
        queries.extend(target["expr"] for target in panel.get("targets", []))
    return queries


def promql_metric_names(expr: str) -> set[str]:
    """Return the names in a PromQL expression that are neither PromQL words nor labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", text))
    return names - PROMQL_WORDS


def template_metric_names(dashboard: dict) -> set[str]:
    names = set()
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query_text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?\s*,\s*\w+\)", query_text.strip())
        if variable.get("type") == "query":
            assert match, f"template variable {variable['name']} has an unsupported query: {query_text!r}"
            names.add(match.group(1))
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def test_promql_metric_names_skip_labels_and_functions():
    expr = 'histogram_quantile(0.95, sum by (le, route) (rate(e4srec_batch_size_bucket{route="/x"}[$__rate_interval]))) / up'

    assert promql_metric_names(expr) == {"e4srec_batch_size_bucket", "up"}


def test_dashboard_queries_use_only_known_metrics(dashboard):
    queries = dashboard_queries(dashboard)
    assert queries, "the dashboard has no queries"

    for expr in queries:
        unknown = promql_metric_names(expr) - QUERYABLE_SERIES

        assert not unknown, f"query uses unknown metric names {sorted(unknown)}: {expr}"
    assert template_metric_names(dashboard) <= QUERYABLE_SERIES


def test_dashboard_shows_every_known_metric(dashboard):
    used = set().union(*(promql_metric_names(expr) for expr in dashboard_queries(dashboard)))
    used_base_names = {re.sub(r"_(?:bucket|sum|count)$", "", name) if name in HISTOGRAM_SERIES else name for name in used}

    assert KNOWN_METRICS - used_base_names == set()


def test_dashboard_panels_use_provisioned_datasource(dashboard):
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    uid = datasources[0]["uid"]
    panels = [panel for panel in dashboard_panels(dashboard) if panel["type"] != "row"]

    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]


def test_dashboard_panel_ids_are_unique(dashboard):
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]

    assert len(ids) == len(set(ids))


def test_service_registers_only_known_metrics():
    from service.metrics import ServiceMetrics

    registered = set()
    for family in ServiceMetrics().registry.collect():
        registered.add(f"{family.name}_total" if family.type == "counter" else family.name)
    unknown = registered - KNOWN_METRICS

    assert not unknown, (
        f"service/metrics.py registers {sorted(unknown)}, which tests/test_compose.py does not know; "
        "add them to the metric sets there and to docker/grafana/dashboards/e4srec.json"
    )


# --- Dockerfiles ---


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (INSTRUCTION, arguments) pairs, joining continued lines."""
    instructions = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def index_of(instructions: list[tuple[str, str]], keyword: str, fragment: str) -> int:
    for index, (name, arguments) in enumerate(instructions):
        if name == keyword and fragment in arguments:
            return index
    raise AssertionError(f"no {keyword} instruction contains {fragment!r}")


@pytest.mark.parametrize("dockerfile", [DOCKERFILE_CPU, DOCKERFILE_CUDA], ids=["cpu", "cuda"])
def test_dockerfile_installs_with_setup_script(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    torch_step = index_of(instructions, "RUN", "torch==2.13.0")
    setup_step = index_of(instructions, "RUN", "bash scripts/setup.sh")

    assert torch_step < setup_step, "torch must be installed before scripts/setup.sh runs"
    assert "--dev" not in instructions[setup_step][1]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE_CPU, DOCKERFILE_CUDA], ids=["cpu", "cuda"])
def test_dockerfile_prepares_backbone_and_copies_adapters(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    cache_env = index_of(instructions, "ENV", "E4SREC_CACHE_DIR=")
    prepare = index_of(instructions, "RUN", "e4srec prepare-backbone")
    copy_adapters = index_of(instructions, "COPY", "adapters/")
    workdir = instructions[index_of(instructions, "WORKDIR", "/")][1]
    adapters_destination = instructions[copy_adapters][1].split()[-1].rstrip("/")

    assert cache_env < prepare, "E4SREC_CACHE_DIR must be set before prepare-backbone fills the cache"
    assert dockerfile_env(dockerfile)["E4SREC_CACHE_DIR"].startswith("/")
    assert f"{workdir}/{adapters_destination}" == dockerfile_env(dockerfile)["E4SREC_ADAPTERS_DIR"]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE_CPU, DOCKERFILE_CUDA], ids=["cpu", "cuda"])
def test_dockerfile_runs_service_as_non_root(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    user_steps = [index for index, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    cmd_step = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "CMD")
    arg_defaults = dockerfile_arg_defaults(dockerfile)
    user = re.sub(r"\$\{(\w+)\}", lambda match: arg_defaults[match.group(1)], instructions[user_steps[-1]][1])

    assert user_steps[-1] < cmd_step
    assert user.split(":")[0] not in ("root", "0"), user


@pytest.mark.parametrize("dockerfile", [DOCKERFILE_CPU, DOCKERFILE_CUDA], ids=["cpu", "cuda"])
def test_dockerfile_serves_port_8000(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    cmd_step = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "CMD")
    healthcheck = instructions[index_of(instructions, "HEALTHCHECK", "CMD")][1]

    assert json.loads(instructions[cmd_step][1]) == ["e4srec", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert ("EXPOSE", "8000") in instructions
    assert "http://127.0.0.1:8000/healthz" in healthcheck


def test_cpu_dockerfile_uses_slim_python_and_cpu_torch():
    instructions = dockerfile_instructions(DOCKERFILE_CPU)
    torch_step = instructions[index_of(instructions, "RUN", "torch==2.13.0")][1]

    assert ("FROM", "python:3.11-slim") in instructions
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step


def test_cuda_dockerfile_uses_cuda_torch_and_bfloat16():
    instructions = dockerfile_instructions(DOCKERFILE_CUDA)
    torch_step = instructions[index_of(instructions, "RUN", "torch==2.13.0")][1]
    env = dockerfile_env(DOCKERFILE_CUDA)

    assert any(keyword == "ARG" and "nvidia/cuda:" in arguments for keyword, arguments in instructions)
    assert "--index-url" not in torch_step, "the CUDA build of torch comes from the default PyPI index"
    assert env["E4SREC_DEVICE"] == "cuda"
    assert env["E4SREC_DTYPE"] == "bfloat16"


def test_dockerignore_excludes_local_state():
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}

    for pattern in (".git", ".venv", ".env", "runs"):
        assert pattern in patterns, f".dockerignore does not exclude {pattern}"


# --- .env.example ---


def env_example_names() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


def test_env_example_documents_compose_variables():
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))

    assert referenced, "docker-compose.yml references no variables"
    assert referenced - env_example_names() == set()


def test_env_example_documents_service_settings():
    from service.settings import Settings

    expected = {f"E4SREC_{field.upper()}" for field in Settings.model_fields}
    expected |= {"REDIS_URL", "E4SREC_ADMIN_TOKEN"}

    assert expected - env_example_names() == set()

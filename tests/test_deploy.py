"""deploy/ cannot be run here (no container engine, no Kubernetes), so every manifest is parsed and checked
against the code: images and their pinned bases, the commands (through the CLI's own parser, and
Ray's for `ray ...`), the configs they load, ports, mounted paths, and every metric name the dashboard
and Prometheus use against what `/metrics` really exports (Ray's against Ray's own metric table)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from pipelines.cli import build_parser
from pipelines.config import load_serve_config
from pipelines.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PINS = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#"))
OUR_IMAGES = {f"curator:{VERSION}", f"curator-cuda:{VERSION}"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for p in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def curator_argvs(command: Any) -> list[list[str]]:
    """The `curator ...` invocations in a compose command / entrypoint string or list."""
    if isinstance(command, list) and command and command[0] in {"serve", "ingest", "query", "report", "train",
                                                                  "produce", "demo"}:
        return [command]  # arguments to the image's `curator` entrypoint
    return [w[1:] for w in shell_commands(command) if w[0] == "curator"]


def ray_argvs(command: Any) -> list[list[str]]:
    return [w[1:] for w in shell_commands(command) if w[0] == "ray"]


def shell_commands(command: Any) -> list[list[str]]:
    """The simple commands of a `sh -c` script (split at && ; || |), `exec` dropped."""
    text = " ".join(command) if isinstance(command, list) else str(command)
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds: list[list[str]] = [[]]
    for tok in lex:
        if tok in ("&&", ";", "||", "|", "&"):
            cmds.append([])
        else:
            cmds[-1].append(tok)
    return [c[1:] if c[0] == "exec" else c for c in cmds if c]


def parse_ray(argv: list[str]) -> Any:
    from ray.scripts.scripts import cli

    cmd = cli.commands[argv[0]]
    return cmd.make_context(argv[0], list(argv[1:]))


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a RayCluster / RayJob (head, worker groups, submitter)."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] == "RayJob" else doc["spec"]
    out = []
    if "headGroupSpec" in spec:
        out += spec["headGroupSpec"]["template"]["spec"]["containers"]
        for g in spec.get("workerGroupSpecs", []):
            out += g["template"]["spec"]["containers"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
    return out


def exported_metrics() -> set[str]:
    """Sample names /metrics exports once every labelled metric has a child (prometheus_client adds _total)."""
    m = Metrics()
    m.items_in.labels("kafka").inc()
    m.items_out.labels("kept").inc()
    m.lag.labels("0").set(1)
    m.queue_items.labels("embed").set(1)
    m.batch_seconds.labels("embed").observe(0.1)
    m.rss.labels("total").set(1)
    m.pss.labels("total").set(1)
    m.shard_items.labels("0").set(1)
    m.shard_search_seconds.labels("0").observe(0.1)
    m.polls.labels("data").inc()
    text = m.render().decode()
    names = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    families = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}
    assert families <= {n.removesuffix("_total") for n in names} | {re.sub(r"_(bucket|sum|count)$", "", n)
                                                                   for n in names} | names, \
        "a labelled metric has no child here: give it one above"
    return names


def ray_metrics() -> set[str]:
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    return {f"ray_{k}" for k in METRICS_GAUGES}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression or a page (not config keys such as service.ray_address,
    nor module files such as ray_data.py)."""
    return set(re.findall(r"(?<![.\w])((?:curator|ray)_[a-z0-9_]+)(?![a-z0-9_]|\.py)", expr))


# =====================================================================================


def test_every_manifest_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".yml", ".yaml", ".json", ".toml"} <= kinds
    for p in files:
        if p.suffix in (".yml", ".yaml"):
            assert list(yaml.safe_load_all(p.read_text())), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
    assert {k for k, _ in k8s()} == {"RayCluster", "RayJob", "PodMonitor", "PersistentVolumeClaim", "ConfigMap"}


def test_images_are_pinned_non_root_and_run_curator() -> None:
    uid = None
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / name).read_text()
        bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
        assert len(bases) == 1 and re.search(r":\S*\d", bases[0]) and "latest" not in bases[0], bases
        assert f"torch=={PINS['torch']}" in text and f"torchvision=={PINS['torchvision']}" in text
        assert "-c constraints.txt" in text
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0")
        uid = int(users[-1])
        assert re.search(r'^ENTRYPOINT \["curator"\]', text, re.M)
        cmd = json.loads(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
        args = build_parser().parse_args(cmd)
        assert args.command == "serve" and f"COPY deploy/curator.example.toml {args.config}" in text
        assert "EXPOSE 9108" in text
    cuda = (DEPLOY / "Dockerfile.cuda").read_text()
    assert "nvidia/cuda:" in cuda and "faiss-gpu==" in cuda and "pip uninstall -y faiss-cpu" in cuda
    assert cuda.index("pip uninstall -y faiss-cpu") < cuda.index("faiss-gpu==")
    # compose and Kubernetes run exactly these images, as the same non-root user
    for svc in compose()["services"].values():
        img = svc["image"]
        assert img in OUR_IMAGES or (":" in img and not img.endswith(":latest")), img
        if img in OUR_IMAGES:
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    for (kind, name), doc in k8s().items():
        if kind in ("RayCluster", "RayJob"):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            if "headGroupSpec" in spec:
                assert spec["rayVersion"] == PINS["ray"], name
            for c in containers(doc):
                assert c["image"] in OUR_IMAGES, (name, c["image"])
            for pod in _pod_specs(doc):
                sc = pod["securityContext"]
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid, name


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    pods = []
    if "headGroupSpec" in spec:
        pods.append(spec["headGroupSpec"]["template"]["spec"])
        pods += [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in doc["spec"]:
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    return pods


def test_compose_commands_configs_ports_and_volumes_agree_with_the_code() -> None:
    c = compose()
    svcs = c["services"]
    parser = build_parser()
    # the service: a Ray node (Ray's own CLI accepts the flags), then `curator serve` (curator's accepts them)
    cmd = svcs["curator"]["command"]
    (ray_join,) = ray_argvs(cmd)
    ctx = parse_ray(ray_join)
    assert ctx.params["address"] == "ray-head:6379"
    head = parse_ray(["start", *svcs["ray-head"]["command"][1:]])
    assert head.params["head"] and head.params["port"] == 6379
    assert int(head.params["metrics_export_port"]) == ctx.params["metrics_export_port"] == 8080
    parse_ray(svcs["ray-head"]["healthcheck"]["test"][2:])
    (argv,) = curator_argvs(cmd)
    args = parser.parse_args(argv)
    assert args.command == "serve"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs["curator"]["volumes"]}  # target -> source
    host_cfg = DEPLOY / mounts[args.config]  # the --config file is mounted from the repo
    assert host_cfg.is_file()
    from curator.config_text import overrides_from_args

    scfg = load_serve_config(host_cfg, overrides_from_args(args))
    assert scfg.service.host == "0.0.0.0" and scfg.service.ray_address == "auto"
    assert any(scfg.run.store.out.startswith(m + "/") for m, src in mounts.items() if not src.startswith("."))
    port = scfg.service.port
    assert f"127.0.0.1:{port}:{port}" in svcs["curator"]["ports"]
    assert f":{port}/healthz" in " ".join(svcs["curator"]["healthcheck"]["test"])
    # Kafka: the topics kafka-init creates are the ones the service reads and dead-letters to
    bootstrap = scfg.kafka.bootstrap_servers
    assert f"INTERNAL://{bootstrap}" in svcs["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    init = " ".join(svcs["kafka-init"]["command"])
    assert f"{scfg.kafka.topic}:" in init and f"{scfg.kafka.dead_letter_topic}:" in init
    # the demo producer's commands
    prod = svcs["demo-producer"]["command"]
    (pargv,) = curator_argvs(prod)
    pargs = parser.parse_args(pargv)
    assert pargs.command == "produce" and pargs.topic == scfg.kafka.topic and pargs.bootstrap == bootstrap
    from curator.demo_data import write_demo_inputs  # noqa: F401 - the snippet's import exists
    assert "write_demo_inputs('/data/demo', 0)" in " ".join(prod) and pargv[1].startswith("/data/demo/")
    # Prometheus scrapes the service's port and Ray's metrics port; Grafana gets the dashboard
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {f"curator:{port}", "ray-head:8080", "curator:8080"} <= targets
    g = {v.split(":")[1]: v.split(":")[0] for v in svcs["grafana"]["volumes"]}
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/curator.yml").read_text())
    dash_dir = prov["providers"][0]["options"]["path"]
    assert (DEPLOY / g[dash_dir] / "curator.json").is_file()
    assert (DEPLOY / g["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").is_file()
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    dash = json.loads((DEPLOY / "grafana/dashboards/curator.json").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["uid"]}
    for svc in svcs.values():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), p  # loopback only on the host


def test_kuberay_jobs_cluster_and_monitor_agree_with_the_code(tmp_path: Path) -> None:
    docs = k8s()
    cluster = docs[("RayCluster", "curator")]
    serve, train = docs[("RayJob", "curator-serve")], docs[("RayJob", "curator-train")]
    pvc, cm, mon = (docs[("PersistentVolumeClaim", "curator-data")], docs[("ConfigMap", "curator-config")],
                    docs[("PodMonitor", "curator")])
    parser = build_parser()
    assert "redisAddress" in cluster["spec"]["gcsFaultToleranceOptions"]
    assert serve["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in serve["spec"]
    # the service's entrypoint, with the config the head mounts from the ConfigMap
    sargs = parser.parse_args(shlex.split(serve["spec"]["entrypoint"])[1:])
    assert sargs.command == "serve"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    (hc,) = head["containers"]
    mounts = {m["mountPath"]: m["name"] for m in hc["volumeMounts"]}
    vols = {v["name"]: v for v in head["volumes"]}
    cfg_dir, cfg_file = str(Path(sargs.config).parent), Path(sargs.config).name
    assert vols[mounts[cfg_dir]]["configMap"]["name"] == cm["metadata"]["name"] and cfg_file in cm["data"]
    (tmp_path / cfg_file).write_text(cm["data"][cfg_file])
    scfg = load_serve_config(tmp_path / cfg_file)
    assert scfg.uses_kafka and scfg.service.host == "0.0.0.0"
    data_mount = next(p for p, n in mounts.items() if "persistentVolumeClaim" in vols[n])
    assert vols[mounts[data_mount]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert scfg.run.store.out.startswith(data_mount + "/")
    # ports: the PodMonitor's named ports are the head's, with the service's port and Ray's metrics port
    ports = {p["name"]: p["containerPort"] for p in hc["ports"]}
    assert ports["curator-http"] == scfg.service.port
    assert ports["metrics"] == int(cluster["spec"]["headGroupSpec"]["rayStartParams"]["metrics-export-port"])
    assert {e["port"] for e in mon["spec"]["podMetricsEndpoints"]} == {"curator-http", "metrics"}
    assert all(e["path"] == "/metrics" for e in mon["spec"]["podMetricsEndpoints"])
    assert mon["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # the embedder pool fits the CPU worker group
    cpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu")
    assert scfg.service.embed_actors * scfg.service.embed_num_cpus <= cpu["replicas"] * int(
        cpu["rayStartParams"]["num-cpus"])
    # training: its own cluster, deleted after the job; trains on the service's run directory
    ts = train["spec"]
    assert ts["shutdownAfterJobFinishes"] is True and ts["ttlSecondsAfterFinished"] > 0
    targs = parser.parse_args(shlex.split(ts["entrypoint"])[1:])
    assert targs.command == "train" and targs.run_dir == scfg.run.store.out
    for pod in _pod_specs(train):
        pmounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert data_mount in pmounts and pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "curator-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dashboard_metrics_are_the_exported_ones() -> None:
    exported, ray = exported_metrics(), ray_metrics()
    # Prometheus conventions: counters end in _total, the histogram is in seconds, units are base units
    for n in exported:
        assert n.startswith("curator_") and not re.search(r"_(ms|milliseconds|mb|kb|percent)(_|$)", n), n
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            assert f"{fam.name}_total" in exported, fam.name
        elif fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        else:
            assert not fam.name.endswith("_total"), fam.name
    assert {"curator_items_out_total", "curator_dead_letters_total", "curator_batch_seconds_bucket",
            "curator_resident_memory_bytes", "curator_last_commit_timestamp_seconds"} <= exported
    dash = json.loads((DEPLOY / "grafana/dashboards/curator.json").read_text())
    used: set[str] = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, t["expr"]
            for n in names:
                if n.startswith("ray_"):
                    assert n in ray, f"{n} is not one of Ray's metrics"
                else:
                    assert n in exported, f"{n} (panel {p['title']!r}) is not exported by /metrics"
            used |= names
    need = {"curator_items_out_total", "curator_kafka_lag", "curator_queue_items", "curator_batch_seconds_bucket",
            "curator_index_size", "curator_memory_pss_bytes", "curator_dead_letters_total"}
    assert need <= used, need - used
    assert "histogram_quantile" in json.dumps(dash)


@pytest.mark.parametrize("doc", ["docs/operations.md", "README.md"])
def test_metric_names_in_docs_are_exported(doc: str) -> None:
    exported, ray = exported_metrics(), ray_metrics()
    text = (ROOT / doc).read_text()
    names = metric_names(text)
    bad = {n for n in names if n not in exported and n not in ray and not any(
        e.startswith(n) for e in exported)}  # a family name in prose (curator_batch_seconds) is fine
    assert not bad, bad

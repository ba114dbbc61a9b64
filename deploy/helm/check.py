#!/usr/bin/env python3
"""Renders, lints and validates the Shoal Helm chart offline, and writes every rendered component
config out so that the real binaries can be started with them (tests/tests/deploy.rs does that).

    ~/.cache/shoal/helm-venv/bin/python deploy/helm/check.py --out DIR

Needs `helm-python-sdk` (Helm v4's Go SDK as a native library: chart loading, lint, rendering)
and `kubernetes-validate` (Kubernetes OpenAPI schemas, bundled: no cluster, no network); both
are installed into ~/.cache/shoal/helm-venv by scripts/install-deps.

For each variant (the chart's defaults; deploy/helm/all-options.yaml, which turns on every
option; `membership.mode: dns`; deploy/helm/mtls-cert-manager.yaml and mtls-secrets.yaml, mutual
TLS from cert-manager or existing Secrets with htpasswd or token authentication) it: lints the
chart (strict); renders it; validates every object against the Kubernetes schema in strict mode
(unknown fields are errors; cert-manager Certificates, whose CRD schema is not bundled, against
the fields and values cert-manager v1 accepts); checks the facts the design relies on (agent
DaemonSet, origin StatefulSet with volume claims and a headless Service, probes on /livez and /health (agent: /readyz),
resource requests, scrape annotations, TLS and host networking when asked, with mutual TLS every
component's certificate, `tls:` section and https:// addresses, and the proxy's auth); runs the agent's
config-rendering init command and the node-setup script for real with `sh` against temporary
directories (install, reinstall, restore: the backup comes back byte for byte); and writes
OUT/configs.json listing each rendered component config. It also proves its own checks can
fail: a template `fail` and a schema violation must both be reported.

Exit status 0 when everything holds; otherwise 1 with every problem listed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "shoal"
ALL_OPTIONS = HERE / "all-options.yaml"
MTLS_VARIANTS = {"mtls-cert-manager": HERE / "mtls-cert-manager.yaml", "mtls-secrets": HERE / "mtls-secrets.yaml"}
RELEASE = "shoal"
NAMESPACE = "shoal-system"
# Oldest Kubernetes version the chart is validated against (a current, supported release).
KUBE_VERSION = "1.30.0"
COMPONENTS = ("origin", "build-index", "proxy", "tracker", "agent")
DNS_COMPONENTS = ("build-index", "proxy", "tracker")
# Values key (mtls.existingSecrets.<key>) and certificate role of each component.
MTLS_ROLES = {"origin": "origin", "buildIndex": "build-index", "tracker": "tracker", "proxy": "proxy", "agent": "agent"}
MTLS_DIR = "/etc/shoal/mtls"
# What cert-manager v1 accepts in the fields the chart renders (its CRD schema is not bundled).
CERTIFICATE_SPEC = {"secretName", "issuerRef", "duration", "renewBefore", "privateKey", "usages", "uris", "dnsNames"}
KEY_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}
# Values the agent's init container substitutes from the downward API.
POD_ENV = {"POD_IP": "10.1.2.3", "NODE_IP": "127.0.0.1", "NODE_NAME": "node-7"}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            self.items.append(message)
        return condition


def lint(values: dict | None, problems: Problems, variant: str) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
    for error in report.get("errors") or []:
        problems.items.append(f"{variant}: lint error: {error}")
    for message in report.get("messages") or []:
        # 1 = info (e.g. "icon is recommended"); warnings and errors fail.
        if message.get("severity", 0) >= 2:
            problems.items.append(f"{variant}: lint: {message['path']}: {message['error']}")


def render(values: dict | None) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("metadata", {}).setdefault("annotations", {})
                objects.append(document)
    return objects


def validate(obj: dict) -> None:
    if obj.get("apiVersion") == "cert-manager.io/v1":
        validate_certificate(obj)
        return
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def validate_certificate(obj: dict) -> None:
    """A cert-manager Certificate, by the rules of its CRD for the fields the chart renders."""
    errors = []
    spec = obj.get("spec") or {}
    if obj.get("kind") != "Certificate":
        errors.append(f"kind {obj.get('kind')} is not Certificate")
    errors += [f"spec.{key}: not a field the chart may render" for key in set(spec) - CERTIFICATE_SPEC]
    if not isinstance(spec.get("secretName"), str) or not spec.get("secretName"):
        errors.append("spec.secretName: required")
    issuer = spec.get("issuerRef") or {}
    if not issuer.get("name") or set(issuer) - {"name", "kind", "group"}:
        errors.append(f"spec.issuerRef: needs a name and only name, kind, group: {issuer}")
    for field in ("duration", "renewBefore"):
        if field in spec and not re.fullmatch(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+", str(spec[field])):
            errors.append(f"spec.{field}: {spec[field]!r} is not a Go duration")
    key = spec.get("privateKey") or {}
    if key.get("algorithm") not in (None, "RSA", "ECDSA", "Ed25519") or key.get("rotationPolicy") not in (None, "Never", "Always"):
        errors.append(f"spec.privateKey: {key}")
    if not set(spec.get("usages") or []) <= KEY_USAGES:
        errors.append(f"spec.usages: unknown usages {set(spec['usages']) - KEY_USAGES}")
    for field in ("uris", "dnsNames"):
        if not all(isinstance(v, str) and v for v in spec.get(field) or []):
            errors.append(f"spec.{field}: not a list of strings")
    if not (spec.get("uris") or spec.get("dnsNames")):
        errors.append("spec: a certificate needs at least one subject alternative name")
    if errors:
        raise ValueError("; ".join(errors))


def describe(error: Exception) -> str:
    """The schema error's one-line message and where it is, not the whole schema."""
    caught = getattr(error, "caught", error)
    where = "/".join(str(p) for p in getattr(caught, "absolute_path", []))
    return f"{where}: {getattr(caught, 'message', caught)}" if where else str(getattr(caught, "message", caught))


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def check_workload(obj: dict, port: str, problems: Problems, variant: str) -> None:
    """A Shoal workload: probes on /livez and /health (agent: /readyz), requests, scrape annotations, the Shoal image."""
    name = f"{variant}: {obj['kind']} {obj['metadata']['name']}"
    annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
    problems.check(annotations.get("prometheus.io/scrape") == "true", f"{name}: no scrape annotation")
    problems.check(annotations.get("prometheus.io/path") == "/metrics", f"{name}: no metrics path")
    containers = pod_spec(obj)["containers"]
    problems.check(len(containers) == 1, f"{name}: expected one container")
    container = containers[0]
    # Liveness: the process serves; readiness: the agent's says whether its tracker and
    # build-index answer (/readyz), the others' that they serve (/health).
    ready = "/readyz" if obj["kind"] == "DaemonSet" else "/health"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", ready)):
        get = container.get(probe, {}).get("httpGet", {})
        problems.check(
            get.get("path") == path and get.get("port") == port,
            f"{name}: {probe} is not GET {path} on port {port}: {get}",
        )
    problems.check(
        {"cpu", "memory"} <= set(container.get("resources", {}).get("requests", {})),
        f"{name}: cpu and memory requests missing",
    )
    problems.check(
        any(p.get("name") == port for p in container.get("ports", [])),
        f"{name}: no container port named {port}",
    )


def probe_schemes(workload: dict) -> set:
    container = pod_spec(workload)["containers"][0]
    return {container[p]["httpGet"].get("scheme") for p in ("livenessProbe", "readinessProbe")}


def mount_of_secret(workload: dict, secret: str) -> dict | None:
    """The container's mount of the Secret volume named `secret`."""
    volume = next((v for v in pod_spec(workload)["volumes"] if v.get("secret", {}).get("secretName") == secret), None)
    container = pod_spec(workload)["containers"][0]
    return volume and next((m for m in container["volumeMounts"] if m["name"] == volume["name"]), None)


def check_proxy_tls(deployment: dict, files: dict[str, str], tls: dict, mtls: bool, problems: Problems, variant: str) -> None:
    """proxy.tls: the Secret is mounted where proxy.yaml's `tls` points and the probes use HTTPS."""
    config = yaml.safe_load(files.get("proxy.yaml", "{}")) or {}
    schemes = probe_schemes(deployment)
    if mtls:
        return  # the proxy serves its mTLS certificate: check_mtls checks it
    if not tls["enabled"]:
        problems.check("tls" not in config and schemes == {"HTTP"}, f"{variant}: proxy serves TLS though proxy.tls is off")
        return
    problems.check(schemes == {"HTTPS"}, f"{variant}: proxy probes are not HTTPS: {schemes}")
    paths = config.get("tls") or {}
    mount = mount_of_secret(deployment, tls["secretName"])
    problems.check(
        mount is not None
        and paths.get("cert") == f"{mount['mountPath']}/tls.crt"
        and paths.get("key") == f"{mount['mountPath']}/tls.key",
        f"{variant}: proxy.yaml tls {paths} is not the mounted Secret {tls['secretName']}",
    )


def check_proxy_auth(deployment: dict, files: dict[str, str], auth: dict, problems: Problems, variant: str) -> None:
    """proxy.auth: proxy.yaml's `auth` names the file of the mounted Secret, with the rules."""
    config = (yaml.safe_load(files.get("proxy.yaml", "{}")) or {}).get("auth")
    if auth["htpasswd"]["existingSecret"]:
        secret, key, field = auth["htpasswd"]["existingSecret"], "htpasswd", ("htpasswd", "path")
    elif auth["token"]["rootCertBundleSecret"]:
        secret, key, field = auth["token"]["rootCertBundleSecret"], auth["token"]["rootCertBundleKey"], ("token", "root_cert_bundle")
    else:
        problems.check(config is None, f"{variant}: proxy.yaml has auth though proxy.auth is off: {config}")
        return
    if not problems.check(config is not None, f"{variant}: proxy.yaml has no auth section"):
        return
    mount = mount_of_secret(deployment, secret)
    problems.check(
        mount is not None and config.get(field[0], {}).get(field[1]) == f"{mount['mountPath']}/{key}",
        f"{variant}: proxy.yaml auth.{'.'.join(field)} is not key {key} of the mounted Secret {secret}: {config}",
    )
    problems.check(config.get("rules", []) == auth["rules"], f"{variant}: proxy auth rules {config.get('rules')}")
    problems.check(config.get("groups", {}) == auth["groups"], f"{variant}: proxy auth groups {config.get('groups')}")
    if "token" in config:
        wanted = {k: auth["token"][k] for k in ("realm", "service", "issuer")}
        problems.check(
            {k: config["token"].get(k) for k in wanted} == wanted, f"{variant}: proxy auth token {config['token']}"
        )


def internal_addresses(component: str, config: dict) -> tuple[list[str], list[str]]:
    """The HTTP addresses a component calls other components at, and its gRPC ones."""
    def origins(value) -> list[str]:
        if isinstance(value, dict) and "dns" in value:
            # What a resolved member looks like (DnsConfig::member).
            dns = value["dns"]
            scheme = "https://" if dns.get("scheme") == "https" else ""
            return [f"{scheme}<ip>:{dns['port']}"]
        members = value.get("static", []) if isinstance(value, dict) else value or []
        return [m["http"] if isinstance(m, dict) else m for m in members]

    http = origins(config.get("origins"))
    grpc = []
    if component == "origin":
        http += config["cluster"]["origins"] + [config["cluster"]["advertise"]]
    if component in ("proxy", "agent"):
        http.append(config["build_index"])
    if component == "agent":
        grpc.append(config["tracker"])
    if component == "tracker":
        value = config["origins"]
        members = value.get("static", []) if isinstance(value, dict) else value
        grpc += [m["peer"] for m in members if isinstance(m, dict)]
    return http, grpc


def check_mtls(objects: list[dict], merged: dict, problems: Problems, variant: str) -> None:
    """mtls.enabled: every component mounts its certificate's Secret (an existing one or a
    Certificate naming its role), its config's `tls:` section points there with the CA, its
    internal HTTP addresses are https:// and its gRPC ones host:port, and the probes of every
    TLS listener use HTTPS."""
    mtls = merged["mtls"]
    workloads = {
        "origin": find(objects, "StatefulSet", f"{RELEASE}-origin"),
        "buildIndex": find(objects, "Deployment", f"{RELEASE}-build-index"),
        "tracker": find(objects, "Deployment", f"{RELEASE}-tracker"),
        "proxy": find(objects, "Deployment", f"{RELEASE}-proxy"),
        "agent": find(objects, "DaemonSet", f"{RELEASE}-agent"),
    }
    certificates = [o for o in objects if o["kind"] == "Certificate"]
    for key, role in MTLS_ROLES.items():
        name = f"{variant}: {role}"
        secret = mtls["existingSecrets"][key]
        if not secret:
            certificate = next((c for c in certificates if c["metadata"]["name"] == f"{RELEASE}-{role}-mtls"), None)
            if not problems.check(certificate is not None, f"{name}: no existing Secret and no Certificate"):
                continue
            spec = certificate["spec"]
            secret = spec["secretName"]
            problems.check(spec.get("uris") == [f"spiffe://shoal/{role}"], f"{name}: Certificate uris {spec.get('uris')}")
            problems.check(
                {"server auth", "client auth"} <= set(spec.get("usages", [])), f"{name}: Certificate usages {spec.get('usages')}"
            )
            problems.check(
                spec["issuerRef"] == mtls["certManager"]["issuerRef"], f"{name}: Certificate issuer {spec['issuerRef']}"
            )
            if role == "proxy":
                problems.check(
                    set(mtls["certManager"]["proxyDnsNames"]) <= set(spec.get("dnsNames", [])),
                    f"{name}: the proxy's public names are not in its Certificate: {spec.get('dnsNames')}",
                )
        else:
            problems.check(
                not any(c["metadata"]["name"] == f"{RELEASE}-{role}-mtls" for c in certificates),
                f"{name}: a Certificate is rendered though mtls.existingSecrets.{key} is set",
            )
        workload = workloads[key]
        if not problems.check(workload is not None, f"{name}: no workload"):
            continue
        mount = mount_of_secret(workload, secret)
        if not problems.check(mount is not None and mount["mountPath"] == MTLS_DIR, f"{name}: Secret {secret} not mounted at {MTLS_DIR}"):
            continue
        volume = next(v for v in pod_spec(workload)["volumes"] if v.get("secret", {}).get("secretName") == secret)
        problems.check("items" not in volume["secret"], f"{name}: the certificate's Secret is mounted by items (renewals would not reach the pod)")
        component = "build-index" if key == "buildIndex" else role
        for file, text in config_files(objects, component).items():
            config = yaml.safe_load(text)
            wanted = {"cert": f"{MTLS_DIR}/tls.crt", "key": f"{MTLS_DIR}/tls.key", "ca": f"{MTLS_DIR}/ca.crt"}
            if mtls["identities"]:
                wanted["identities"] = mtls["identities"]
            problems.check(config.get("tls") == wanted, f"{name}: {file} tls {config.get('tls')}, wanted {wanted}")
            http, grpc = internal_addresses(role, config)
            problems.check(all(a.startswith("https://") for a in http), f"{name}: {file} calls over plain HTTP: {http}")
            problems.check(not any("://" in a for a in grpc), f"{name}: {file} gRPC addresses carry a scheme: {grpc}")
        # The agent's registry port stays plain HTTP (its callers are the node's runtime).
        wanted_scheme = {"HTTP"} if role == "agent" else {"HTTPS"}
        problems.check(probe_schemes(workload) == wanted_scheme, f"{name}: probes {probe_schemes(workload)}, wanted {wanted_scheme}")
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        problems.check(
            (annotations.get("prometheus.io/scheme") == "https") == (role != "agent"),
            f"{name}: scrape scheme {annotations.get('prometheus.io/scheme')}",
        )


def config_files(objects: list[dict], component: str) -> dict[str, str]:
    cm = find(objects, "ConfigMap", f"{RELEASE}-{component}")
    return dict(cm["data"]) if cm else {}


def render_agent_config(objects: list[dict], work: Path, problems: Problems, variant: str) -> Path | None:
    """Runs the agent init container's own shell command with the pod's downward-API values."""
    ds = find(objects, "DaemonSet", f"{RELEASE}-agent")
    init = next((c for c in pod_spec(ds).get("initContainers", []) if c["name"] == "render-config"), None)
    if not problems.check(init is not None, f"{variant}: agent has no render-config init container"):
        return None
    template_dir = work / "agent-template"
    out_dir = work / "agent-config"
    template_dir.mkdir()
    out_dir.mkdir()
    for key, text in config_files(objects, "agent").items():
        (template_dir / key).write_text(text)
    command = [
        part.replace("/etc/shoal-template", str(template_dir)).replace("/etc/shoal/", f"{out_dir}/")
        for part in init["command"]
    ]
    env = dict(os.environ, **POD_ENV)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if not problems.check(result.returncode == 0, f"{variant}: agent init command failed: {result.stderr}"):
        return None
    path = out_dir / "agent.yaml"
    text = path.read_text()
    problems.check("__" not in text, f"{variant}: placeholders left in the agent config:\n{text}")
    config = yaml.safe_load(text)
    problems.check(config.get("peer_id") == POD_ENV["NODE_NAME"], f"{variant}: agent peer_id {config.get('peer_id')}")
    return path


def check_node_setup(objects: list[dict], work: Path, problems: Problems, variant: str) -> None:
    """Runs the rendered node-setup script with `sh` against a fake containerd certs.d."""
    script = config_files(objects, "node-setup").get("node-setup.sh")
    if not problems.check(script is not None, f"{variant}: node-setup ConfigMap missing"):
        return
    ds = find(objects, "DaemonSet", f"{RELEASE}-node-setup")
    if not problems.check(ds is not None, f"{variant}: node-setup DaemonSet missing"):
        return
    container = pod_spec(ds)["containers"][0]
    problems.check(
        container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        == ["sh", "/scripts/node-setup.sh", "restore"],
        f"{variant}: node-setup has no preStop restore hook",
    )
    path = work / "node-setup.sh"
    path.write_text(script)
    certs = work / "certs.d"
    existing = certs / "registry.example.com" / "hosts.toml"
    existing.parent.mkdir(parents=True)
    original = 'server = "https://registry.example.com"\n# the node\'s own file\n'
    existing.write_text(original)

    def run(action: str) -> None:
        env = dict(os.environ, CERTS_DIR=str(certs), NODE_IP=POD_ENV["NODE_IP"])
        result = subprocess.run(["sh", str(path), action], env=env, capture_output=True, text=True)
        problems.check(result.returncode == 0, f"{variant}: node-setup {action} failed: {result.stderr}")

    values = yaml.safe_load(ALL_OPTIONS.read_text())
    registries = values["nodeSetup"]["registries"]
    endpoint = "http://127.0.0.1:16000"
    for _ in range(2):  # installing twice must keep the original backup
        run("install")
        for registry in registries:
            hosts = certs / registry["host"] / "hosts.toml"
            if not problems.check(hosts.is_file(), f"{variant}: {hosts} not written"):
                continue
            parsed = tomllib.loads(hosts.read_text())
            problems.check(parsed.get("server") == registry["server"], f"{variant}: {hosts}: server {parsed.get('server')}")
            problems.check(
                parsed.get("host", {}).get(endpoint, {}).get("capabilities") == ["pull", "resolve"],
                f"{variant}: {hosts}: no pull/resolve host entry for {endpoint}: {parsed}",
            )
        backup = existing.with_name("hosts.toml.shoal-backup")
        problems.check(backup.is_file() and backup.read_text() == original, f"{variant}: backup not kept")
    run("restore")
    problems.check(existing.read_text() == original, f"{variant}: restore did not bring the original back")
    problems.check(not existing.with_name("hosts.toml.shoal-backup").exists(), f"{variant}: backup left behind")
    created = certs / "registry.internal:5000"
    problems.check(not created.exists(), f"{variant}: restore left {created} behind")


def check_variant(variant: str, values: dict | None, out: Path, problems: Problems) -> list[dict]:
    lint(values, problems, variant)
    objects = render(values)
    for obj in objects:
        try:
            validate(obj)
        except Exception as error:  # the library raises several types; all are failures here
            problems.items.append(f"{variant}: {obj['kind']} {obj['metadata'].get('name')}: {describe(error)}")

    merged = helm.Chart.load(CHART).merge_values(values)
    agent = find(objects, "DaemonSet", f"{RELEASE}-agent")
    origin = find(objects, "StatefulSet", f"{RELEASE}-origin")
    if problems.check(agent is not None, f"{variant}: no agent DaemonSet"):
        check_workload(agent, "registry", problems, variant)
        spec = pod_spec(agent)
        problems.check(
            any(v.get("hostPath", {}).get("path") == merged["agent"]["cache"]["hostPath"] for v in spec["volumes"]),
            f"{variant}: agent cache is not the hostPath {merged['agent']['cache']['hostPath']}",
        )
        problems.check(spec.get("tolerations") == merged["agent"]["tolerations"], f"{variant}: agent tolerations")
        problems.check(bool(spec.get("hostNetwork")) == merged["agent"]["hostNetwork"], f"{variant}: agent hostNetwork")
        ports = spec["containers"][0]["ports"]
        problems.check(
            merged["agent"]["hostNetwork"] or any(p.get("hostPort") == merged["agent"]["hostPort"] for p in ports),
            f"{variant}: agent registry port not published as a hostPort",
        )
    if problems.check(origin is not None, f"{variant}: no origin StatefulSet"):
        check_workload(origin, "http", problems, variant)
        problems.check(origin["spec"]["replicas"] == merged["origin"]["replicas"], f"{variant}: origin replicas")
        problems.check(bool(origin["spec"].get("volumeClaimTemplates")), f"{variant}: origin has no volumeClaimTemplates")
        headless = find(objects, "Service", origin["spec"]["serviceName"])
        problems.check(
            headless is not None and headless["spec"].get("clusterIP") == "None",
            f"{variant}: origin serviceName {origin['spec']['serviceName']} is not a headless Service",
        )
    for component in ("tracker", "build-index", "proxy"):
        deployment = find(objects, "Deployment", f"{RELEASE}-{component}")
        if problems.check(deployment is not None, f"{variant}: no {component} Deployment"):
            check_workload(deployment, "http", problems, variant)
        problems.check(find(objects, "Service", f"{RELEASE}-{component}") is not None, f"{variant}: no {component} Service")

    if merged["buildIndex"]["persistence"]["enabled"]:
        deployment = find(objects, "Deployment", f"{RELEASE}-build-index")
        claim = find(objects, "PersistentVolumeClaim", f"{RELEASE}-build-index")
        problems.check(
            claim is not None
            and deployment is not None
            and any(
                v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
                for v in pod_spec(deployment)["volumes"]
            )
            and deployment["spec"].get("strategy", {}).get("type") == "Recreate",
            f"{variant}: build-index persistence is not a mounted claim with the Recreate strategy",
        )

    if merged["tls"]["caSecret"]["enabled"]:
        for obj in objects:
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet") and not obj["metadata"]["name"].endswith("node-setup"):
                env = {e["name"]: e.get("value") for e in pod_spec(obj)["containers"][0].get("env", [])}
                problems.check(
                    env.get("SSL_CERT_FILE", "").startswith("/etc/shoal/ca/"),
                    f"{variant}: {obj['metadata']['name']} does not trust the CA secret",
                )

    deployment = find(objects, "Deployment", f"{RELEASE}-proxy")
    if deployment is not None:
        check_proxy_tls(deployment, config_files(objects, "proxy"), merged["proxy"]["tls"], merged["mtls"]["enabled"], problems, variant)
        check_proxy_auth(deployment, config_files(objects, "proxy"), merged["proxy"]["auth"], problems, variant)
    if merged["mtls"]["enabled"]:
        check_mtls(objects, merged, problems, variant)

    dns = merged["membership"]["mode"] == "dns"
    for component in ("proxy", "build-index", "tracker"):
        # Upload handles name an origin by its address, so the proxy follows DNS like the others.
        follows = dns
        for text in config_files(objects, component).values():
            origins = yaml.safe_load(text).get("origins")
            problems.check(
                isinstance(origins, dict) == follows
                and (not follows or "shoal-origins." in origins["dns"]["name"]),
                f"{variant}: {component} origins do not follow membership.mode {merged['membership']['mode']}: {origins}",
            )

    # Preheat into agents follows the agents' headless Service, which exists only when it is on.
    wanted = merged["proxy"]["preheat"]["agents"]
    preheats = int(wanted["count"]) > 0 or float(wanted["share"]) > 0
    agents_service = find(objects, "Service", f"{RELEASE}-agents")
    problems.check(
        (agents_service is not None) == preheats
        and (agents_service is None or agents_service["spec"].get("clusterIP") == "None"),
        f"{variant}: the agents' headless Service does not follow proxy.preheat.agents: {wanted}",
    )
    for text in config_files(objects, "proxy").values():
        preheat = yaml.safe_load(text).get("preheat", {})
        members = preheat.get("agents", {}).get("members", {})
        problems.check(
            bool(preheat.get("state_dir"))
            and (not preheats or f"{RELEASE}-agents." in members.get("dns", {}).get("name", "")),
            f"{variant}: proxy preheat does not follow proxy.preheat: {preheat}",
        )

    # Scratch space for running the scripts lives under OUT, which the caller cleans up.
    work = out / "work" / variant
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    variant_dir = out / variant
    variant_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    # The DNS variant changes only how proxy, build-index and tracker find the origins.
    for component in DNS_COMPONENTS if variant == "dns" else COMPONENTS:
        if component == "agent":
            path = render_agent_config(objects, work, problems, variant)
            if path:
                target = variant_dir / "agent.yaml"
                target.write_text(path.read_text())
                configs.append({"variant": variant, "component": component, "path": str(target)})
            continue
        files = config_files(objects, component)
        problems.check(bool(files), f"{variant}: no config rendered for {component}")
        for key, text in sorted(files.items()):
            yaml.safe_load(text)  # a YAML syntax error fails here, before the binary sees it
            target = variant_dir / f"{component}--{key}"
            target.write_text(text)
            configs.append({"variant": variant, "component": component, "path": str(target)})
    if merged["nodeSetup"]["enabled"]:
        check_node_setup(objects, work, problems, variant)
    return configs


def checks_can_fail(problems: Problems) -> None:
    """The checks above must be able to fail: template errors (values the chart refuses) and
    schema violations (a Deployment, a Certificate)."""
    refused = {
        "membership.mode bogus": {"membership": {"mode": "bogus"}},
        "mtls without issuer or Secrets": {"mtls": {"enabled": True}},
        "mtls with proxy.tls": {
            "mtls": {"enabled": True, "certManager": {"issuerRef": {"name": "ca"}}},
            "proxy": {"tls": {"enabled": True}},
        },
        "htpasswd and token": {
            "proxy": {"auth": {"htpasswd": {"existingSecret": "a"}, "token": {"rootCertBundleSecret": "b", "realm": "r", "service": "s", "issuer": "i"}}}
        },
        "token without realm": {"proxy": {"auth": {"token": {"rootCertBundleSecret": "b", "service": "s", "issuer": "i"}}}},
        "rules without auth": {"proxy": {"auth": {"rules": [{"repository": ".*"}]}}},
    }
    for what, values in refused.items():
        try:
            render(values)
            problems.items.append(f"self-check: {what} did not fail the render")
        except helm.HelmError:
            pass
    certificate = copy.deepcopy(
        next(o for o in render(yaml.safe_load(MTLS_VARIANTS["mtls-cert-manager"].read_text())) if o["kind"] == "Certificate")
    )
    certificate["spec"]["usages"].append("server-auth")
    certificate["spec"]["isCA"] = "yes"
    try:
        validate(certificate)
        problems.items.append("self-check: a malformed Certificate passed validation")
    except ValueError:
        pass
    deployment = copy.deepcopy(find(render(None), "Deployment", f"{RELEASE}-proxy"))
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    try:
        validate(deployment)
        problems.items.append("self-check: a malformed Deployment passed schema validation")
    except Exception:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="where rendered configs are written")
    args = parser.parse_args()
    problems = Problems()
    configs = []
    variants = {
        "default": None,
        "all-options": yaml.safe_load(ALL_OPTIONS.read_text()),
        "dns": {"membership": {"mode": "dns"}},
    }
    variants.update({name: yaml.safe_load(path.read_text()) for name, path in MTLS_VARIANTS.items()})
    for variant, values in variants.items():
        try:
            configs += check_variant(variant, values, args.out, problems)
        except helm.HelmError as error:
            problems.items.append(f"{variant}: helm: {error}")
    try:
        checks_can_fail(problems)
    except helm.HelmError as error:
        problems.items.append(f"self-check: helm: {error}")
    (args.out / "configs.json").write_text(json.dumps(configs, indent=2))
    if problems.items:
        print(f"chart check FAILED ({len(problems.items)} problems):", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"chart check passed: {len(variants)} variants, {len(configs)} component configs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

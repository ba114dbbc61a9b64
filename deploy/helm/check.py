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
(unknown fields are errors; cert-manager Certificates and the Prometheus Operator's objects,
whose CRD schemas are not bundled, against the fields and values their v1 CRDs accept); checks
the facts the design relies on (agent DaemonSet, origin StatefulSet with volume claims, a
headless Service, PDB and anti-affinity, startup and liveness probes on /livez and readiness on
/readyz, security contexts (uid 65532, fsGroup, read-only root, no
capabilities; root only where node files are written), the ServiceAccount, credentials from
existing Secrets, resource requests, scrape annotations, monitoring objects and NetworkPolicies
when asked, TLS and host networking when asked, with mutual TLS every component's certificate,
`tls:` section and https:// addresses, and the proxy's auth); runs the config-rendering init
commands and the node-setup script for real with `sh` against temporary directories (install,
reinstall, restore: every file comes back byte for byte); and writes OUT/configs.json listing
each rendered component config and OUT/<variant>/objects.json with every rendered object. It
also proves its own checks can fail: template `fail`s, values.schema.json refusals and schema
violations must all be reported.

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
# The preheat Secret's value the init containers write into configs: quotes, a backslash, an
# ampersand and the trailing newline of a Secret made from a file must all survive.
PREHEAT_SECRET = "it's a \\secret & \"more\"\n"
# The uid and gid both Dockerfiles run as.
IMAGE_UID = 65532


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
    if obj.get("apiVersion") == "monitoring.coreos.com/v1":
        validate_monitoring(obj)
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


# What the Prometheus Operator's v1 CRDs accept in the fields the chart renders (their schemas
# are not bundled either).
SERVICE_MONITOR_ENDPOINT = {"port", "path", "interval", "scheme", "tlsConfig", "relabelings"}
ALERT_RULE = {"alert", "expr", "for", "labels", "annotations"}


def validate_monitoring(obj: dict) -> None:
    errors = []
    spec = obj.get("spec") or {}
    duration = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
    if obj.get("kind") == "ServiceMonitor":
        errors += [f"spec.{k}: unknown" for k in set(spec) - {"selector", "namespaceSelector", "endpoints"}]
        if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
            errors.append("spec.selector.matchLabels: required")
        for endpoint in spec.get("endpoints") or [None]:
            if not isinstance(endpoint, dict) or not endpoint.get("port"):
                errors.append(f"spec.endpoints: an endpoint needs a port: {endpoint}")
                continue
            errors += [f"spec.endpoints.{k}: unknown" for k in set(endpoint) - SERVICE_MONITOR_ENDPOINT]
            if endpoint.get("scheme", "http") not in ("http", "https"):
                errors.append(f"spec.endpoints.scheme: {endpoint['scheme']}")
            if not duration.match(str(endpoint.get("interval", "0"))):
                errors.append(f"spec.endpoints.interval: {endpoint['interval']}")
    elif obj.get("kind") == "PrometheusRule":
        for group in spec.get("groups") or [None]:
            if not isinstance(group, dict) or not group.get("name") or not group.get("rules"):
                errors.append(f"spec.groups: a group needs a name and rules: {group}")
                continue
            for rule in group["rules"]:
                errors += [f"rule {rule.get('alert')}: {k} unknown" for k in set(rule) - ALERT_RULE]
                if not rule.get("alert") or not isinstance(rule.get("expr"), str) or not duration.match(str(rule.get("for", "0"))):
                    errors.append(f"rule {rule}: needs alert, expr and a duration in for")
                if not all(isinstance(v, str) for v in {**rule.get("labels", {}), **rule.get("annotations", {})}.values()):
                    errors.append(f"rule {rule.get('alert')}: labels and annotations must be strings")
    else:
        errors.append(f"kind {obj.get('kind')}: not one the chart renders")
    if errors:
        raise ValueError("; ".join(errors))


def check_monitoring(objects: list[dict], merged: dict, problems: Problems, variant: str) -> None:
    """ServiceMonitors (one per Service, each keeping only its Service's endpoints, on a port
    that Service has), the PrometheusRule's three alerts, the dashboard ConfigMap holding
    deploy/grafana/shoal.json and the NetworkPolicies, each exactly when its value asks."""
    metrics = merged["metrics"]
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    problems.check(bool(monitors) == metrics["serviceMonitor"]["enabled"], f"{variant}: {len(monitors)} ServiceMonitors")
    for monitor in monitors:
        service = find(objects, "Service", monitor["metadata"]["name"])
        endpoint = monitor["spec"]["endpoints"][0]
        problems.check(
            service is not None
            and any(p["name"] == endpoint["port"] for p in service["spec"]["ports"])
            and endpoint["relabelings"][0]["regex"] == service["metadata"]["name"],
            f"{variant}: ServiceMonitor {monitor['metadata']['name']} does not match a Service port",
        )
    rules = find(objects, "PrometheusRule", RELEASE)
    problems.check((rules is not None) == metrics["prometheusRule"]["enabled"], f"{variant}: PrometheusRule")
    if rules is not None:
        alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
        problems.check(
            alerts == {"ShoalOriginWritebackBacklog", "ShoalAgentBlobErrors", "ShoalTrackerDown"}, f"{variant}: alerts {alerts}"
        )
    dashboard = find(objects, "ConfigMap", f"{RELEASE}-dashboard")
    problems.check((dashboard is not None) == metrics["grafanaDashboard"]["enabled"], f"{variant}: dashboard ConfigMap")
    if dashboard is not None:
        problems.check(
            json.loads(dashboard["data"]["shoal.json"]) == json.loads((HERE.parent / "grafana" / "shoal.json").read_text()),
            f"{variant}: the dashboard ConfigMap is not deploy/grafana/shoal.json",
        )
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    problems.check(len(policies) == (5 if merged["networkPolicy"]["enabled"] else 0), f"{variant}: {len(policies)} NetworkPolicies")
    for policy in policies:
        selected = policy["spec"]["podSelector"]["matchLabels"]
        problems.check(
            any(pod_spec(o) and o["spec"]["selector"]["matchLabels"] == selected for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")),
            f"{variant}: NetworkPolicy {policy['metadata']['name']} selects no workload",
        )


def check_credentials(objects: list[dict], merged: dict, problems: Problems, variant: str) -> None:
    """backendCredentials.existingSecret reaches the origins and build-index as envFrom; each
    component's env/envFrom reaches its container; the ServiceAccount carries its annotations;
    with preheat.existingSecret no ConfigMap holds a preheat secret value, and the proxy and
    agents read the Secret's key in their render-config init container."""
    account = find(objects, "ServiceAccount", merged["serviceAccount"]["name"] or RELEASE)
    problems.check(
        (account is not None) == merged["serviceAccount"]["create"]
        and (account is None or account["metadata"]["annotations"] == merged["serviceAccount"]["annotations"]),
        f"{variant}: ServiceAccount {account}",
    )
    secret = merged["backendCredentials"]["existingSecret"]
    for key, kind, name in (("origin", "StatefulSet", "origin"), ("buildIndex", "Deployment", "build-index"), ("tracker", "Deployment", "tracker"), ("proxy", "Deployment", "proxy"), ("agent", "DaemonSet", "agent")):
        workload = find(objects, kind, f"{RELEASE}-{name}")
        if workload is None:
            continue
        container = main_container(workload)
        values = merged[key]
        wanted_from = ([{"secretRef": {"name": secret}}] if secret and key in ("origin", "buildIndex") else []) + values["envFrom"]
        problems.check(container.get("envFrom", []) == wanted_from, f"{variant}: {name} envFrom {container.get('envFrom')}")
        problems.check(
            all(e in container.get("env", []) for e in values["env"]), f"{variant}: {name} env lacks {values['env']}"
        )
    preheat = merged["proxy"]["preheat"]
    if preheat["existingSecret"]:
        for obj in objects:
            if obj["kind"] == "ConfigMap":
                problems.check(
                    all("preheat" not in (yaml.safe_load(t) or {}) or yaml.safe_load(t)["preheat"].get("secret") in (None, "__PREHEAT_SECRET__")
                        for k, t in obj["data"].items() if k.endswith((".yaml", ".yaml.template"))),
                    f"{variant}: ConfigMap {obj['metadata']['name']} holds a preheat secret value",
                )
        for kind, name in (("Deployment", "proxy"), ("DaemonSet", "agent")):
            init = next((c for c in pod_spec(find(objects, kind, f"{RELEASE}-{name}")).get("initContainers", []) if c["name"] == "render-config"), {})
            ref = next((e["valueFrom"]["secretKeyRef"] for e in init.get("env", []) if e["name"] == "PREHEAT_SECRET"), None)
            problems.check(
                ref == {"name": preheat["existingSecret"], "key": preheat["existingSecretKey"]},
                f"{variant}: {name} does not read the preheat Secret: {ref}",
            )


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


def main_container(obj: dict) -> dict:
    """The Shoal component's container (the agent's pod also runs node-setup)."""
    containers = pod_spec(obj)["containers"]
    component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return next((c for c in containers if c["name"] == component), containers[0])


def check_security(obj: dict, merged: dict, problems: Problems, variant: str) -> None:
    """Every pod runs as the image's non-root uid with fsGroup and the chart's ServiceAccount;
    every container drops all capabilities, cannot escalate and has a read-only root; only the
    agent's cache-owner init container and the node-setup container run as root (they write
    node files), cache-owner with CHOWN and DAC_READ_SEARCH only."""
    name = f"{variant}: {obj['kind']} {obj['metadata']['name']}"
    spec = pod_spec(obj)
    pod = spec.get("securityContext", {})
    wanted = merged["podSecurityContext"]
    problems.check(
        pod.get("runAsNonRoot") is True and pod.get("runAsUser") == IMAGE_UID and pod.get("fsGroup") == IMAGE_UID
        and pod == wanted,
        f"{name}: pod securityContext {pod}",
    )
    account = merged["serviceAccount"]["name"] or RELEASE
    problems.check(spec.get("serviceAccountName") == account, f"{name}: serviceAccountName {spec.get('serviceAccountName')}")
    root_containers = {"cache-owner": ["CHOWN", "DAC_READ_SEARCH"], "node-setup": None}
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container.get("securityContext", {})
        where = f"{name}: container {container['name']}"
        problems.check(
            context.get("allowPrivilegeEscalation") is False
            and context.get("readOnlyRootFilesystem") is True
            and context.get("capabilities", {}).get("drop") == ["ALL"],
            f"{where}: securityContext {context}",
        )
        if container["name"] in root_containers:
            problems.check(
                context.get("runAsUser") == 0 and context.get("capabilities", {}).get("add") == root_containers[container["name"]],
                f"{where}: runs as {context.get('runAsUser')} with {context.get('capabilities')}",
            )
        else:
            problems.check("runAsUser" not in context, f"{where}: overrides the pod's user")


def check_workload(obj: dict, port: str, problems: Problems, variant: str) -> None:
    """A Shoal workload: probes on /livez and /readyz, requests, scrape annotations, the Shoal image."""
    name = f"{variant}: {obj['kind']} {obj['metadata']['name']}"
    annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
    problems.check(annotations.get("prometheus.io/scrape") == "true", f"{name}: no scrape annotation")
    problems.check(annotations.get("prometheus.io/path") == "/metrics", f"{name}: no metrics path")
    container = main_container(obj)
    # Startup and liveness: the process serves; readiness: what it depends on answers.
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
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
    container = main_container(workload)
    return {container[p]["httpGet"].get("scheme") for p in ("startupProbe", "livenessProbe", "readinessProbe")}


def mount_of_secret(workload: dict, secret: str) -> dict | None:
    """The container's mount of the Secret volume named `secret`."""
    volume = next((v for v in pod_spec(workload)["volumes"] if v.get("secret", {}).get("secretName") == secret), None)
    container = main_container(workload)
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


def render_config(objects: list[dict], workload: dict, component: str, work: Path, problems: Problems, variant: str) -> Path | None:
    """Runs the workload's render-config init container command (its own shell text) with the
    pod's downward-API values and the preheat Secret's value, and returns the config it wrote."""
    init = next((c for c in pod_spec(workload).get("initContainers", []) if c["name"] == "render-config"), None)
    if not problems.check(init is not None, f"{variant}: {component} has no render-config init container"):
        return None
    template_dir = work / f"{component}-template"
    out_dir = work / f"{component}-config"
    template_dir.mkdir()
    out_dir.mkdir()
    for key, text in config_files(objects, component).items():
        (template_dir / key).write_text(text)
    command = [
        part.replace("/etc/shoal-template", str(template_dir)).replace("/etc/shoal/", f"{out_dir}/")
        for part in init["command"]
    ]
    env = dict(os.environ, **POD_ENV)
    if any(e["name"] == "PREHEAT_SECRET" for e in init.get("env", [])):
        env["PREHEAT_SECRET"] = PREHEAT_SECRET
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if not problems.check(result.returncode == 0, f"{variant}: {component} init command failed: {result.stderr}"):
        return None
    path = out_dir / f"{component}.yaml"
    text = path.read_text()
    problems.check("__" not in text, f"{variant}: placeholders left in the {component} config:\n{text}")
    config = yaml.safe_load(text)
    if component == "agent":
        problems.check(config.get("peer_id") == POD_ENV["NODE_NAME"], f"{variant}: agent peer_id {config.get('peer_id')}")
    if "PREHEAT_SECRET" in env:
        problems.check(
            config.get("preheat", {}).get("secret") == PREHEAT_SECRET.rstrip("\n"),
            f"{variant}: {component} preheat secret {config.get('preheat', {}).get('secret')!r}",
        )
    return path


# A containerd 1.x config as `containerd config default` writes it, trimmed: the registry table
# with an empty config_path.
CONTAINERD_CONFIG = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
"""


def node_setup_env(container: dict, mounts: dict[str, Path]) -> dict[str, str]:
    """The node-setup container's environment as the kubelet gives it (downward API from
    POD_ENV, $(VAR) expanded), its mount paths mapped to `mounts`."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        else:
            value = POD_ENV["NODE_IP"]  # status.hostIP, the only field it reads
        for mount, path in mounts.items():
            if value.startswith(mount):
                value = str(path) + value[len(mount):]
        env[entry["name"]] = value
    return env


def check_node_setup(objects: list[dict], merged: dict, work: Path, problems: Problems, variant: str) -> None:
    """Runs the node-setup container's script (from its ConfigMap) with `sh` and the container's
    own environment against a fake node: containerd's certs.d with a file of the node's own, and
    a containerd 1.x config without config_path. Install twice, restore: the node's files come
    back byte for byte and what install created goes away."""
    files = config_files(objects, "node-setup")
    agent = find(objects, "DaemonSet", f"{RELEASE}-agent")
    container = next((c for c in pod_spec(agent)["containers"] if c["name"] == "node-setup"), None)
    if not problems.check(bool(files) and container is not None, f"{variant}: no node-setup ConfigMap or container"):
        return
    problems.check(
        container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        == ["sh", "/etc/shoal-node-setup/node-setup.sh", "restore"],
        f"{variant}: node-setup has no preStop restore hook",
    )
    problems.check(
        container["command"][-1].startswith("sh /etc/shoal-node-setup/node-setup.sh install"),
        f"{variant}: node-setup does not run install: {container['command']}",
    )
    node = work / "node"
    scripts, certs, containerd = node / "node-setup", node / "certs.d", node / "containerd"
    for directory in (scripts, certs, containerd):
        directory.mkdir(parents=True)
    for key, text in files.items():
        (scripts / key).write_text(text)
    mounts = {m["mountPath"]: {"node-setup": scripts, "certs": certs, "containerd-config": containerd}[m["name"]] for m in container["volumeMounts"]}
    env = node_setup_env(container, mounts)
    setup = merged["nodeSetup"]
    registries = [(r["host"], r.get("server")) for r in setup["registries"]]
    if setup["catchAll"]:
        registries.append(("_default", None))
    listed = [line.split() for line in (scripts / "registries").read_text().splitlines() if line.strip()]
    problems.check(
        listed == [[host] + ([server] if server else []) for host, server in registries],
        f"{variant}: node-setup registries file {listed}, wanted {registries}",
    )
    existing = certs / registries[0][0] / "hosts.toml"
    existing.parent.mkdir(parents=True)
    original = 'server = "https://registry.example.com"\n# the node\'s own file\n'
    existing.write_text(original)
    config = containerd / "config.toml"
    config.write_text(CONTAINERD_CONFIG)
    endpoint = "http://127.0.0.1:16000" if merged["agent"]["hostNetwork"] else f"http://{POD_ENV['NODE_IP']}:{merged['agent']['hostPort']}"
    problems.check(env.get("AGENT_ENDPOINT") == endpoint, f"{variant}: node-setup endpoint {env.get('AGENT_ENDPOINT')}, wanted {endpoint}")

    def run(action: str) -> None:
        result = subprocess.run(["sh", str(scripts / "node-setup.sh"), action], env=dict(os.environ, **env), capture_output=True, text=True)
        problems.check(result.returncode == 0, f"{variant}: node-setup {action} failed: {result.stderr}")

    for _ in range(2):  # installing twice must keep the original backups
        run("install")
        for host, server in registries:
            hosts = certs / host / "hosts.toml"
            if not problems.check(hosts.is_file(), f"{variant}: {hosts} not written"):
                continue
            parsed = tomllib.loads(hosts.read_text())
            problems.check(parsed.get("server") == server, f"{variant}: {hosts}: server {parsed.get('server')}")
            problems.check(
                parsed.get("host", {}).get(endpoint, {}).get("capabilities") == ["pull", "resolve"],
                f"{variant}: {hosts}: no pull/resolve host entry for {endpoint}: {parsed}",
            )
        backup = existing.with_name("hosts.toml.shoal-backup")
        problems.check(backup.is_file() and backup.read_text() == original, f"{variant}: backup not kept")
        if setup["containerdConfig"]:
            registry = tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
            problems.check(
                registry.get("config_path") == setup["certsDir"], f"{variant}: containerd config_path {registry}"
            )
    run("restore")
    problems.check(existing.read_text() == original, f"{variant}: restore did not bring the original back")
    problems.check(not existing.with_name("hosts.toml.shoal-backup").exists(), f"{variant}: backup left behind")
    problems.check(config.read_text() == CONTAINERD_CONFIG, f"{variant}: containerd's config not restored")
    left = sorted(str(p.relative_to(node)) for d in (certs, containerd) for p in d.rglob("*") if p not in (existing, existing.parent))
    problems.check(left == ["containerd/config.toml"], f"{variant}: restore left {left} behind")


def check_variant(variant: str, values: dict | None, out: Path, problems: Problems) -> list[dict]:
    lint(values, problems, variant)
    objects = render(values)
    for obj in objects:
        try:
            validate(obj)
        except Exception as error:  # the library raises several types; all are failures here
            problems.items.append(f"{variant}: {obj['kind']} {obj['metadata'].get('name')}: {describe(error)}")

    merged = helm.Chart.load(CHART).merge_values(values)
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            check_security(obj, merged, problems, variant)
    check_monitoring(objects, merged, problems, variant)
    check_credentials(objects, merged, problems, variant)
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
        problems.check(spec.get("priorityClassName") == merged["agent"]["priorityClassName"], f"{variant}: agent priorityClassName")
        problems.check(agent["spec"]["updateStrategy"] == merged["agent"]["updateStrategy"], f"{variant}: agent updateStrategy")
        # The kubelet creates the hostPath root-owned and applies no fsGroup: an init container
        # chowns it before the agent (uid 65532) starts.
        init = next((c for c in spec.get("initContainers", []) if c["name"] == "cache-owner"), None)
        problems.check(
            init is not None
            and any(m["name"] == "cache" and m["mountPath"] == "/var/lib/shoal/agent" for m in init["volumeMounts"])
            and f"chown -R \"$owner\" /var/lib/shoal/agent" in init["command"][-1]
            and f'owner="{IMAGE_UID}:{IMAGE_UID}"' in init["command"][-1],
            f"{variant}: agent cache is not chowned to {IMAGE_UID} by an init container",
        )
        problems.check(bool(spec.get("hostNetwork")) == merged["agent"]["hostNetwork"], f"{variant}: agent hostNetwork")
        ports = spec["containers"][0]["ports"]
        problems.check(
            merged["agent"]["hostNetwork"] or any(p.get("hostPort") == merged["agent"]["hostPort"] for p in ports),
            f"{variant}: agent registry port not published as a hostPort",
        )
    if problems.check(origin is not None, f"{variant}: no origin StatefulSet"):
        check_workload(origin, "http", problems, variant)
        problems.check(origin["spec"]["replicas"] == merged["origin"]["replicas"], f"{variant}: origin replicas")
        pdb = find(objects, "PodDisruptionBudget", f"{RELEASE}-origin")
        problems.check(
            (pdb is not None) == merged["origin"]["podDisruptionBudget"]["enabled"]
            and (pdb is None or pdb["spec"]["selector"] == origin["spec"]["selector"]),
            f"{variant}: origin PodDisruptionBudget {pdb}",
        )
        anti = pod_spec(origin).get("affinity", {}).get("podAntiAffinity", {})
        wanted = {"soft": "preferredDuringSchedulingIgnoredDuringExecution", "hard": "requiredDuringSchedulingIgnoredDuringExecution"}
        problems.check(
            bool(merged["origin"]["affinity"]) or list(anti) == [wanted[k] for k in wanted if k == merged["origin"]["antiAffinity"]],
            f"{variant}: origin anti-affinity {anti} for {merged['origin']['antiAffinity']}",
        )
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
                env = {e["name"]: e.get("value") for e in main_container(obj).get("env", [])}
                problems.check(
                    env.get("SSL_CERT_FILE", "").startswith("/etc/shoal/ca/"),
                    f"{variant}: {obj['metadata']['name']} does not trust the CA secret",
                )

    deployment = find(objects, "Deployment", f"{RELEASE}-proxy")
    if deployment is not None:
        # A config with the preheat Secret's placeholder is proxy.yaml.template.
        files = {k.removesuffix(".template"): v for k, v in config_files(objects, "proxy").items()}
        check_proxy_tls(deployment, files, merged["proxy"]["tls"], merged["mtls"]["enabled"], problems, variant)
        check_proxy_auth(deployment, files, merged["proxy"]["auth"], problems, variant)
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
        workload = find(objects, "DaemonSet" if component == "agent" else "Deployment", f"{RELEASE}-{component}")
        renders = workload is not None and pod_spec(workload).get("initContainers")
        if component in ("agent", "proxy") and renders:
            path = render_config(objects, workload, component, work, problems, variant)
            if path:
                target = variant_dir / f"{component}.yaml"
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
        check_node_setup(objects, merged, work, problems, variant)
    # Every rendered object, for tests/tests/chart_docker.rs (which runs the workloads' container
    # specs under Docker).
    (variant_dir / "objects.json").write_text(json.dumps(objects, indent=1))
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
        "preheat secret and existingSecret": {"proxy": {"preheat": {"secret": "a", "existingSecret": "b"}}},
        # values.schema.json, which helm applies before rendering
        "schema: replicas not a number": {"origin": {"replicas": "three"}},
        "schema: unknown top-level key": {"nodesetup": {"enabled": False}},
        "schema: nodeSetup.mode bogus": {"nodeSetup": {"mode": "bogus"}},
        "schema: relative cache hostPath": {"agent": {"cache": {"hostPath": "cache"}}},
        "schema: registry without host": {"nodeSetup": {"registries": [{"server": "https://r"}]}},
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
    all_options = render(yaml.safe_load(ALL_OPTIONS.read_text()))
    for kind, break_it in (
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(scheme="ftp", portz="http")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "ten minutes"})),
    ):
        broken = copy.deepcopy(next(o for o in all_options if o["kind"] == kind))
        break_it(broken)
        try:
            validate(broken)
            problems.items.append(f"self-check: a malformed {kind} passed validation")
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

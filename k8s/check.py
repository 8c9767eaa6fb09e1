#!/usr/bin/env python3
"""Renders and checks CryptFlow's Kubernetes manifests (run by .ci/run).

1. Renders the base and every overlay with `kubectl kustomize`.
2. Validates every rendered object offline against the Kubernetes schemas
   (`kubernetes-validate`, strict: unknown fields are errors).
3. Checks the manifests against what the binaries actually read and serve:
   - each container's image is named after the binary its Dockerfile runs, and its args
     name a config file that a ConfigMap mounts at that path;
   - the ConfigMap's TOML and the container's environment variables load with the real
     binary (`check-config` refuses unknown keys and unknown CRYPTFLOW_* variables);
   - the listen ports of that config are the containerPorts the Services, probes and
     Prometheus annotations use, and the aggregator's `kms_url` is the KMS Service's
     internal port;
   - the probe and metrics paths answer 200 from the real binary, started with the
     manifest's config (file paths and addresses swapped for local ones);
   - every Secret the manifests reference is documented in k8s/README.md.

Usage: python3 k8s/check.py --bin-dir target/release [--kube-version 1.32.0]
Needs: kubectl (for kustomize) and the PyPI packages kubernetes-validate and PyYAML.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["base", "overlays/dev", "overlays/prod"]
SERVICES = {"cryptflow-kms": "kms", "cryptflow-aggregator": "aggregator"}
ENV_PREFIX = {"cryptflow-kms": "CRYPTFLOW_KMS__", "cryptflow-aggregator": "CRYPTFLOW_AGGREGATOR__"}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def render(target):
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / target)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(target, docs, version):
    for d in docs:
        name = f"{target}: {d['kind']}/{d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{name}: no schema ({e})")


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(bin_dir, image):
    base = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    return base, Path(bin_dir) / base


def dockerfile_entrypoint(service):
    text = (ROOT / SERVICES[service] / "Dockerfile").read_text()
    m = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    return Path(m.group(1)).name if m else None


def check_config(exe, toml_text, env_names, prefix):
    """Runs `check-config` on the manifest's TOML with the manifest's variables set."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(toml_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTFLOW_")}
        for n in env_names:
            env[n] = "postgres://user:secret@db:5432/db" if n.endswith("DATABASE_URL") else "x"
        for n in env_names:
            if n.startswith("CRYPTFLOW_") and not n.startswith(prefix) and n not in (
                "CRYPTFLOW_LOG_FORMAT",
            ):
                fail(f"{exe.name}: environment variable {n} is not read by this binary")
        r = subprocess.run([exe, "check-config", "--config", cfg], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{exe.name}: the manifest's config does not load: {r.stderr.strip()}")
            return None
        printed = json.loads(r.stdout)
        if "secret" in r.stdout:
            fail(f"{exe.name}: check-config printed a secret")
        return printed


def local_config(toml_text, tmp, service, kms_url=None):
    """The manifest's config with addresses and file paths made local, for a real run."""
    cfg = tomllib.loads(toml_text)
    ports = {}
    for key in ("listen", "internal_listen", "metrics_listen"):
        if key in cfg:
            ports[key] = free_port()
            cfg[key] = f"127.0.0.1:{ports[key]}"
    cfg["database_url"] = f"sqlite://{tmp}/{service}.db?mode=rwc"
    pub = Path(tmp) / "issuer.pub"
    for k in cfg.get("jwt_keys", []):
        k["public_key_file"] = str(pub)
    if "master_key_file" in cfg:
        cfg["master_key_file"] = str(Path(tmp) / "master.key")
    if "blob_dir" in cfg:
        cfg["blob_dir"] = str(Path(tmp) / "blobs")
    if "kms_token_file" in cfg:
        cfg["kms_token_file"] = str(Path(tmp) / "token")
        cfg["kms_url"] = kms_url
    lines = []
    for k, v in cfg.items():
        if k != "jwt_keys":
            lines.append(f"{k} = {json.dumps(v)}")
    for k in cfg.get("jwt_keys", []):
        lines.append("[[jwt_keys]]")
        lines += [f"{a} = {json.dumps(b)}" for a, b in k.items()]
    return "\n".join(lines) + "\n", ports


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def serve_and_probe(exe, toml_text, tmp, service, paths, kms_url=None):
    text, ports = local_config(toml_text, tmp, service, kms_url)
    cfg = Path(tmp) / f"{service}.toml"
    cfg.write_text(text)
    subprocess.run([exe, "migrate", "--config", cfg], check=True, capture_output=True)
    proc = subprocess.Popen(
        [exe, "serve", "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        base = f"http://127.0.0.1:{ports['listen']}"
        for _ in range(100):
            if get(f"{base}/healthz") == 200:
                break
            time.sleep(0.1)
        for port_key, path in paths:
            status = get(f"http://127.0.0.1:{ports[port_key]}{path}")
            if status != 200:
                fail(f"{exe.name}: GET {path} on {port_key} answered {status}, the manifest probes it")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return ports


def check_consistency(docs, bin_dir, tmp):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    readme = (ROOT / "k8s" / "README.md").read_text()
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []) + by_kind.get("Job", [])
    key = Path(tmp) / "issuer.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", Path(tmp) / "issuer.pub"], check=True)
    (Path(tmp) / "master.key").write_text("11" * 32)
    (Path(tmp) / "token").write_text("not-a-real-token")
    served = {}
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for vol in spec.get("volumes", []):
            secret = vol.get("secret", {}).get("secretName")
            if secret and secret not in readme:
                fail(f"{w['metadata']['name']}: Secret {secret} is not documented in k8s/README.md")
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if ref and not any(ref.startswith(s) for s in re.findall(r"`(cryptflow-[a-z-]+)`", readme)):
                    fail(f"{w['metadata']['name']}: Secret {ref} is not documented in k8s/README.md")
            name, exe = binary(bin_dir, c["image"])
            if name not in SERVICES:
                continue
            if dockerfile_entrypoint(name) != name:
                fail(f"{name}: the image's Dockerfile does not run the {name} binary")
            if not exe.exists():
                fail(f"{exe} not found (build the binaries first)")
                continue
            args = c.get("args", [])
            cfg_path = args[args.index("--config") + 1]
            mount = next(
                (m for m in c["volumeMounts"] if cfg_path.startswith(m["mountPath"] + "/")),
                None,
            )
            vol = next((v for v in spec["volumes"] if mount and v["name"] == mount["name"]), None)
            cm = configmaps.get((vol or {}).get("configMap", {}).get("name"))
            key = Path(cfg_path).name
            if not cm or key not in cm["data"]:
                fail(f"{w['metadata']['name']}: {cfg_path} is not a mounted ConfigMap key")
                continue
            toml_text = cm["data"][key]
            env_names = [e["name"] for e in c.get("env", [])]
            printed = check_config(exe, toml_text, env_names, ENV_PREFIX[name])
            if printed is None or w["kind"] == "Job":
                continue
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            expect = {"http": "listen", "internal": "internal_listen", "metrics": "metrics_listen"}
            for pname, key in expect.items():
                addr = printed.get(key)
                if addr is None and pname not in ports:
                    continue
                if addr is None or ports.get(pname) != port_of(addr):
                    fail(f"{name}: containerPort `{pname}` {ports.get(pname)} but {key} = {addr}")
            annotations = w["spec"]["template"]["metadata"].get("annotations", {})
            if int(annotations.get("prometheus.io/port", 0)) != ports.get("metrics"):
                fail(f"{name}: prometheus.io/port is not the metrics port")
            svc = services.get(name)
            if not svc:
                fail(f"{name}: no Service of that name")
            else:
                for sp in svc["spec"]["ports"]:
                    if sp["targetPort"] not in ports:
                        fail(f"{name}: Service port {sp['name']} targets unknown port {sp['targetPort']}")
            probes = []
            for kind in ("readinessProbe", "livenessProbe"):
                p = c.get(kind, {}).get("httpGet")
                if not p:
                    fail(f"{name}: no HTTP {kind}")
                    continue
                if p["port"] != "http":
                    fail(f"{name}: {kind} is not on the API port")
                probes.append(("listen", p["path"]))
            probes.append(("metrics_listen", annotations.get("prometheus.io/path", "/metrics")))
            served[name] = (exe, toml_text, probes, printed)
    # The aggregator must reach the KMS's internal port through its Service.
    if "cryptflow-aggregator" in served and "cryptflow-kms" in services:
        url = served["cryptflow-aggregator"][3]["kms_url"]
        internal = next((p["port"] for p in services["cryptflow-kms"]["spec"]["ports"] if p["name"] == "internal"), None)
        if url != f"http://cryptflow-kms:{internal}":
            fail(f"aggregator kms_url {url} is not the KMS Service's internal port {internal}")
    # Probe paths answer from the real binaries.
    kms_url = None
    if "cryptflow-kms" in served:
        exe, toml_text, probes, _ = served["cryptflow-kms"]
        ports = serve_and_probe(exe, toml_text, tmp, "kms", probes)
        kms_url = f"http://127.0.0.1:{ports.get('internal_listen', ports['listen'])}"
    if "cryptflow-aggregator" in served:
        exe, toml_text, probes, _ = served["cryptflow-aggregator"]
        serve_and_probe(exe, toml_text, tmp, "aggregator", probes, kms_url)
    return len(served)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    p.add_argument("--kube-version", default="1.32.0")
    args = p.parse_args()
    for target in TARGETS:
        docs = render(target)
        validate(target, docs, args.kube_version)
        with tempfile.TemporaryDirectory() as tmp:
            n = check_consistency(docs, args.bin_dir, tmp)
        print(f"{target}: {len(docs)} objects rendered and validated (Kubernetes {args.kube_version}); {n} services checked against the binaries")
    if failures:
        print(f"{len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print("k8s manifests: OK")


if __name__ == "__main__":
    main()

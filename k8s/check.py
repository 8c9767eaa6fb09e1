#!/usr/bin/env python3
"""Renders and checks CryptFlow's Kubernetes manifests (run by .ci/run).

1. Renders the base and every overlay (k8s/overlays/*) with `kubectl kustomize`.
2. Validates every rendered object offline against the Kubernetes schemas
   (`kubernetes-validate`, strict: unknown fields are errors).
3. Checks the manifests against what the binaries actually read and serve, across
   namespaces (objects are found by namespace and name; in-cluster URLs resolve from the
   caller's namespace):
   - each container's image is named after the binary its Dockerfile runs, and its
     `--config` file is a key of a ConfigMap mounted at that path;
   - every file the configuration (TOML, then the container's CRYPTFLOW_* variables) names
     is provided by a volume of the container: the committee and roster files by a
     ConfigMap, signing and master keys and tokens by a Secret documented in
     k8s/README.md (name and key), the restore witness and a local blob store on a
     writable persistent volume;
   - an aggregator with more than one replica, or scaled by a HorizontalPodAutoscaler,
     keeps its blobs in an S3 bucket (`[s3]`), with its credentials from a Secret
     (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and its database not SQLite; every HPA
     scales a workload of the render;
   - with those files written as the container would see them (the manifests' own
     ConfigMaps; realistic Secrets: fresh Ed25519 node keys put into the committee files,
     a master key, an issuer key, a token), `check-config` loads the configuration
     (unknown keys and unknown CRYPTFLOW_* variables fail) and agrees with the checker's
     reading of it; migration Jobs run `migrate` on a scratch database;
   - every namespace with workloads is created here with restricted pod security;
   - listen ports are the containerPorts the Services, probes and Prometheus annotations
     use; the committee is consistent: every key manager has its own share index and the
     same committee file, the aggregator's copy has the same threshold, indices and keys,
     its URLs for the nodes deployed here are their Services' internal ports (in the
     nodes' namespaces), and the pinned URLs of those nodes are their Ingress hosts on the
     client port; every committee file has n/2 < t ≤ n and a privacy threshold
     2t − n ≥ 2 (MIN_PRIVACY);
   - each key manager has its own signing key, master key and database, and no Secret is
     readable by two nodes; a database deployed here admits its own service and migration
     Job only;
   - a committee deployed in one cluster (more than one node in a render): all n nodes
     of the committee file, each in a namespace of its own, none in the aggregator's, each
     namespace with its own policies;
   - the network policies, per namespace: default deny; clients reach the aggregator's and
     the nodes' client ports through the ingress controller; only the aggregator's pods,
     in its namespace named as such, reach a node's internal port (or an Ingress that
     admits listed addresses only), and the aggregator's egress reaches them; metrics only
     from the monitoring namespace; a key manager's egress is DNS (kube-system) and its
     database — only that database's pods when it is deployed here;
   - each key manager and the aggregator is started with the manifest's configuration
     (paths, addresses and the database made local; the aggregator pointed at the started
     nodes), the probe and metrics paths must answer 200, and a node's client port must not
     serve the aggregator-only endpoints;
   - every Secret the manifests reference is documented in k8s/README.md.

Usage: python3 k8s/check.py --bin-dir target/release [--kube-version 1.32.0] [overlays/dev …]
Needs: kubectl (for kustomize), openssl, and the PyPI packages kubernetes-validate and
PyYAML.
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"cryptflow-kms": "kms", "cryptflow-aggregator": "aggregator"}
ENV_PREFIX = {"cryptflow-kms": "CRYPTFLOW_KMS__", "cryptflow-aggregator": "CRYPTFLOW_AGGREGATOR__"}
# Variables the binaries read besides their prefixed configuration.
OTHER_ENV = {"CRYPTFLOW_LOG_FORMAT", "CRYPTFLOW_KMS_MASTER_KEY"}
# The S3 credentials an aggregator with `[s3]` reads (object_store's AmazonS3Builder::from_env).
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
LISTENERS = {"listen": "http", "internal_listen": "internal", "metrics_listen": "metrics"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
DNS_NAMESPACE = "kube-system"
NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
POD_SECURITY = "pod-security.kubernetes.io/enforce"
DB_PORT, DNS_PORT = 5432, 53
# The smallest privacy threshold 2t − n a committee file here may have: the number of nodes
# that, colluding with the aggregator, can isolate a client's key. At 2, one node may collude
# (e.g. one run by the aggregator's operator) and the keys stay safe.
MIN_PRIVACY = 2
# An Ingress that routes to a key manager's internal port must admit listed clients only.
RESTRICTING_ANNOTATIONS = (
    "nginx.ingress.kubernetes.io/whitelist-source-range",
    "nginx.ingress.kubernetes.io/auth-tls-secret",
)

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


# ---------------------------------------------------------------------------------------
# Rendering and schema validation


def targets():
    overlays = sorted(p.parent for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
    return ["base"] + [str(p.relative_to(ROOT / "k8s")) for p in overlays]


def render(target):
    r = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / target)], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{target}: kustomize failed: {r.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate(target, docs, version):
    for d in docs:
        name = f"{target}: {d['kind']}/{d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{name}: no schema ({e})")


# ---------------------------------------------------------------------------------------
# Small helpers


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def host_of(addr):
    return addr.rsplit(":", 1)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(d):
    """TOML for the shapes the services' files have: scalars, tables of scalars, arrays of
    tables of scalars. Checked by reading it back."""
    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for k, t in tables:
        lines.append(f"[{k}]")
        lines += [f"{json.dumps(str(a))} = {toml_value(b)}" for a, b in t.items()]
    for k, items in arrays:
        for item in items:
            lines.append(f"[[{k}]]")
            lines += [f"{a} = {toml_value(b)}" for a, b in item.items()]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != {k: v for k, v in d.items() if v is not None}:
        raise ValueError("TOML round trip failed")
    return text


def env_value(text):
    """How figment reads an environment value: integers and booleans, else a string."""
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def selects(selector, labels):
    """Whether a label selector (matchLabels / matchExpressions) selects `labels`."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def readme_entries(readme):
    """README lines naming a backticked `cryptflow-…` name (per-node names may be written
    `cryptflow-kms-<x>-…`)."""
    rows = {}
    for line in readme.splitlines():
        for name in re.findall(r"`(cryptflow-[a-z0-9<>-]+)`", line):
            rows.setdefault(name, []).append(line)
    return rows


def documented(readme_rows, name, key=None):
    pattern = re.sub(r"-[0-9]+(?=-|$)", "-<x>", name)
    lines = readme_rows.get(name, []) + readme_rows.get(pattern, [])
    if not lines:
        return False
    return key is None or any(f"`{key}`" in line for line in lines)


# ---------------------------------------------------------------------------------------
# The objects of one render


def ns_of(obj):
    return obj["metadata"].get("namespace", "default")


class Render:
    """The objects of one render. Namespaced objects are looked up by (namespace, name): an
    overlay may put the same names (a node's Service, Secrets, policies) in several
    namespaces."""

    def __init__(self, target, docs):
        self.target = target
        self.docs = docs
        self.by_kind = {}
        for d in docs:
            self.by_kind.setdefault(d["kind"], []).append(d)
        self.configmaps = {(ns_of(c), c["metadata"]["name"]): c for c in self.of("ConfigMap")}
        self.secrets = {(ns_of(s), s["metadata"]["name"]): s for s in self.of("Secret")}
        self.services = self.of("Service")
        self.namespaces = {n["metadata"]["name"]: n for n in self.of("Namespace")}

    def of(self, kind):
        return self.by_kind.get(kind, [])

    def workloads(self):
        return [w for k in WORKLOAD_KINDS for w in self.of(k)]

    def services_for(self, labels, ns):
        return [
            s for s in self.services
            if ns_of(s) == ns and s["spec"].get("selector")
            and selects({"matchLabels": s["spec"]["selector"]}, labels)
        ]

    def service(self, name, ns):
        return next((s for s in self.services if s["metadata"]["name"] == name and ns_of(s) == ns), None)

    def ns_labels(self, ns):
        """A namespace's labels: the render's, and the name label Kubernetes sets."""
        labels = dict((self.namespaces.get(ns) or {}).get("metadata", {}).get("labels") or {})
        labels[NAME_LABEL] = ns
        return labels

    def pods(self):
        """(namespace, pod labels, workload) of every workload's pods."""
        return [(ns_of(w), pod_labels(w), w) for w in self.workloads()]

    def secret_value(self, ns, name, key):
        """A key of a Secret in the render (generated ones), decoded; None if not there."""
        s = self.secrets.get((ns, name))
        if s is None:
            return None
        if key in (s.get("stringData") or {}):
            return s["stringData"][key]
        data = (s.get("data") or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def workload_name(r, w):
    return f"{r.target}: {w['kind']} {ns_of(w)}/{w['metadata']['name']}"


def pod_labels(w):
    return w["spec"]["template"]["metadata"].get("labels", {})


def binary(bin_dir, image):
    base = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    return base, Path(bin_dir) / base


def dockerfile_entrypoint(service):
    text = (ROOT / SERVICES[service] / "Dockerfile").read_text()
    m = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    return Path(m.group(1)).name if m else None


# ---------------------------------------------------------------------------------------
# A container as the binary sees it: its volumes, its configuration, its files


class Mount:
    """A volume mount and what backs it."""

    def __init__(self, path, kind, writable, files=None, secret_files=None):
        self.path = path
        self.kind = kind  # configMap, secret, projected, emptyDir, pvc, other
        self.writable = writable
        self.files = files or {}  # file name → text (from ConfigMaps)
        self.secret_files = secret_files or {}  # file name → (secret name, key)


def mounts_of(r, w, c, who):
    ns = ns_of(w)
    spec = pod_spec(w)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
    out = []

    def configmap_files(src):
        cm = r.configmaps.get((ns, src["name"]))
        if cm is None:
            fail(f"{who}: ConfigMap {src['name']} is mounted but not part of the manifests in namespace {ns}")
            return {}
        data = cm.get("data", {})
        if src.get("items"):
            return {i["path"]: data[i["key"]] for i in src["items"] if i["key"] in data}
        return dict(data)

    def secret_files(src, name_key):
        name = src[name_key]
        items = src.get("items")
        if items:
            return {i["path"]: (name, i["key"]) for i in items}
        # Keys of a hand-made Secret are not in the manifests: any file name may be asked
        # for, and is then checked against the README.
        return {"*": (name, None)}

    for m in c.get("volumeMounts", []):
        if m.get("subPath"):
            fail(f"{who}: subPath mounts are not supported by this checker ({m['name']})")
            continue
        writable = not m.get("readOnly", False)
        if m["name"] in claims:
            out.append(Mount(m["mountPath"], "pvc", writable))
            continue
        v = volumes.get(m["name"])
        if v is None:
            fail(f"{who}: volumeMount {m['name']} has no volume")
            continue
        if "configMap" in v:
            out.append(Mount(m["mountPath"], "configMap", False, configmap_files(v["configMap"])))
        elif "secret" in v:
            out.append(Mount(m["mountPath"], "secret", False, secret_files=secret_files(v["secret"], "secretName")))
        elif "projected" in v:
            files, sfiles = {}, {}
            for s in v["projected"]["sources"]:
                if "configMap" in s:
                    files.update(configmap_files(s["configMap"]))
                elif "secret" in s:
                    sfiles.update(secret_files(s["secret"], "name"))
            out.append(Mount(m["mountPath"], "projected", False, files, sfiles))
        elif "emptyDir" in v:
            out.append(Mount(m["mountPath"], "emptyDir", writable))
        elif "persistentVolumeClaim" in v:
            out.append(Mount(m["mountPath"], "pvc", writable))
        else:
            out.append(Mount(m["mountPath"], "other", writable))
    return out


def mount_for(mounts, path):
    best = None
    for m in mounts:
        if path == m.path or path.startswith(m.path.rstrip("/") + "/"):
            if best is None or len(m.path) > len(best.path):
                best = m
    return best


def effective_config(toml_text, env, prefix):
    """The configuration as the binary builds it: the TOML, then CRYPTFLOW_…__ variables."""
    cfg = tomllib.loads(toml_text)
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        keys = name[len(prefix):].lower().split("__")
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = env_value(value)
    return cfg


def file_roles(cfg):
    """(setting, path, role) for every file the configuration names."""
    out = []
    for key in ("committee_file", "roster_file", "signing_key_file", "master_key_file", "kms_token_file"):
        if cfg.get(key):
            out.append((key, cfg[key], key))
    for x, path in (cfg.get("kms_token_files") or {}).items():
        out.append((f"kms_token_files.{x}", path, "kms_token_file"))
    for k in cfg.get("jwt_keys", []):
        out.append((f"jwt_keys[{k.get('kid')}]", k.get("public_key_file"), "jwt_public_key"))
    return out


# Which kind of volume each file must come from.
SECRET_ROLES = {"signing_key_file", "master_key_file", "kms_token_file"}
CONFIGMAP_ROLES = {"committee_file", "roster_file"}


class Container:
    """One container of a CryptFlow binary in one workload."""

    def __init__(self, r, w, c, name, exe):
        self.r, self.w, self.c, self.name, self.exe = r, w, c, name, exe
        self.ns = ns_of(w)
        self.who = workload_name(r, w)
        self.key = f"{self.ns}-{w['kind']}-{w['metadata']['name']}"  # for scratch directories
        self.is_job = w["kind"] == "Job"
        self.labels = pod_labels(w)
        self.ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        self.mounts = mounts_of(r, w, c, self.who)
        self.env = {}  # literal values; Secret references get realistic stand-ins later
        self.secret_env = {}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                self.secret_env[e["name"]] = (ref["name"], ref["key"])
            elif "value" in e:
                self.env[e["name"]] = e["value"]
            else:
                fail(f"{self.who}: environment variable {e['name']} comes from neither a value nor a Secret")
        self.toml_text = None
        self.cfg = None
        self.loads = True  # until check-config says otherwise
        args = c.get("args", [])
        if "--config" not in args:
            fail(f"{self.who}: {name} is not given --config")
            return
        self.config_path = args[args.index("--config") + 1]
        m = mount_for(self.mounts, self.config_path)
        rel = self.config_path[len(m.path.rstrip("/")) + 1:] if m else None
        if not m or rel not in m.files:
            fail(f"{self.who}: {self.config_path} is not a key of a ConfigMap mounted there")
            return
        self.toml_text = m.files[rel]
        prefix = ENV_PREFIX[name]
        for n in list(self.env) + list(self.secret_env):
            if n.startswith("CRYPTFLOW_") and not n.startswith(prefix) and n not in OTHER_ENV:
                fail(f"{self.who}: environment variable {n} is not read by {name}")
        dummy = {n: "postgres://user:secret@db:5432/db" for n in self.secret_env}
        self.cfg = effective_config(self.toml_text, {**self.env, **dummy}, prefix)

    @property
    def share_index(self):
        return self.cfg.get("share_index", 1) if self.cfg else None

    # -- static checks of the files and volumes ------------------------------------------

    def check_files(self, readme_rows):
        """Every file the configuration names is provided by the right kind of volume."""
        if self.is_job:
            return  # `migrate` reads none of them
        for setting, path, role in file_roles(self.cfg):
            m = mount_for(self.mounts, path)
            if m is None:
                fail(f"{self.who}: {setting} = {path} is on no volume of the container")
                continue
            rel = path[len(m.path.rstrip("/")) + 1:]
            if rel in m.files:
                if role in SECRET_ROLES:
                    fail(f"{self.who}: {setting} = {path} is a secret but comes from a ConfigMap")
                continue
            src = m.secret_files.get(rel) or m.secret_files.get("*")
            if src is None:
                fail(f"{self.who}: {setting} = {path}: no ConfigMap or Secret mounted there has {rel}")
                continue
            if role in CONFIGMAP_ROLES:
                fail(f"{self.who}: {setting} = {path} should come from the consortium's ConfigMap, not a Secret")
            secret, key = src
            key = key or rel
            # (An undocumented Secret is reported once, by its name, in check_target.)
            if (self.ns, secret) in self.r.secrets or not documented(readme_rows, secret):
                continue
            if not documented(readme_rows, secret, key):
                fail(f"{self.who}: Secret {secret} with key `{key}` ({setting}) is not documented in k8s/README.md")
        s3 = self.cfg.get("s3")
        replicas = self.w["spec"].get("replicas", 1) or 0
        scaled = any(
            h["spec"]["scaleTargetRef"]["kind"] == self.w["kind"]
            and h["spec"]["scaleTargetRef"]["name"] == self.w["metadata"]["name"]
            and ns_of(h) == self.ns
            for h in self.r.of("HorizontalPodAutoscaler")
        )
        if self.name == "cryptflow-aggregator":
            if (replicas > 1 or scaled) and not s3:
                fail(f"{self.who}: several replicas share their blobs only through an S3 bucket: set [s3]")
            if s3:
                for n in S3_ENV:
                    if n not in self.secret_env:
                        fail(f"{self.who}: [s3] needs {n} from a Secret (credentials never in the file)")
                if self.cfg.get("database_url", "").startswith("sqlite:"):
                    fail(f"{self.who}: replicas coordinate through PostgreSQL, not SQLite")
        for setting in ("restore_witness_file", "round_keys_file", "blob_dir"):
            path = self.cfg.get(setting)
            if path is None or (setting == "blob_dir" and s3):
                continue
            directory = path if setting == "blob_dir" else str(Path(path).parent)
            m = mount_for(self.mounts, directory)
            if m is None or m.kind != "pvc" or not m.writable:
                fail(f"{self.who}: {setting} = {path} must be on a writable persistent volume")
        if self.name == "cryptflow-kms":
            if not self.cfg.get("restore_witness_file"):
                fail(f"{self.who}: no restore_witness_file: a node restored from a backup would not know it")
            elif (self.w["spec"].get("replicas", 1) or 0) > 1:
                fail(f"{self.who}: the restore witness has one writer: one replica per node")
            db = self.cfg.get("database_url", "")
            witness = self.cfg.get("restore_witness_file")
            # The round keys (default: beside the witness) are what shredding deletes: a copy
            # in the database's volume and its snapshots would defeat it.
            keys = self.cfg.get("round_keys_file") or (witness + ".round-keys" if witness else None)
            if db.startswith("sqlite://"):
                dbm = mount_for(self.mounts, "/" + db.split("://", 1)[1].lstrip("/").split("?")[0])
                for what, path in (("the restore witness", witness), ("the round-key store", keys)):
                    if path and dbm is mount_for(self.mounts, str(Path(path).parent)):
                        fail(f"{self.who}: {what} shares a volume with the database")
        for key in LISTENERS:
            addr = self.cfg.get(key)
            if addr and not self.is_job and host_of(addr) not in ("0.0.0.0", "[::]"):
                fail(f"{self.who}: {key} = {addr} is unreachable from outside the pod")

    # -- the real binary -----------------------------------------------------------------

    def materialize(self, root, keys, committee_urls=None):
        """Writes the container's files under `root` (ConfigMaps as rendered, Secrets as
        realistic stand-ins, committee keys replaced by `keys`), and returns the local
        configuration text and environment."""
        root.mkdir(parents=True, exist_ok=True)
        local = lambda p: str(root) + p  # noqa: E731
        for m in self.mounts:
            d = Path(local(m.path))
            d.mkdir(parents=True, exist_ok=True)
            for name, text in m.files.items():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_text(text)
        roles = {path: role for _, path, role in file_roles(self.cfg)}
        for path, role in roles.items():
            if mount_for(self.mounts, path) is None:
                continue  # reported by check_files (services) or not read (`migrate`)
            target = Path(local(path))
            if role in ("committee_file",) and target.exists():
                target.write_text(with_keys(target.read_text(), keys, committee_urls))
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if role == "signing_key_file":
                shutil.copy(keys[self.share_index][1], target)
            elif role == "master_key_file":
                target.write_text(os.urandom(32).hex())
            elif role == "jwt_public_key":
                shutil.copy(keys["issuer_pub"], target)
            elif role == "kms_token_file":
                target.write_text("e30.e30.c3RhbmQtaW4")  # JWT-shaped stand-in ({}.{}.sig)
        text = localize(self.toml_text, local, self.mounts)
        env = {k: localize_value(v, local, self.mounts) for k, v in self.env.items()}
        return text, env

    def check_config(self, root, keys):
        """`check-config` (services) or `migrate` on a scratch database (Jobs)."""
        text, env = self.materialize(root, keys)
        cfg = root / "config.toml"
        cfg.write_text(text)
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTFLOW_")}
        run_env.update(env)
        for n in self.secret_env:
            run_env[n] = "postgres://user:secret@db:5432/db"
        if self.is_job:
            args = self.c.get("args", [])
            if args[:1] != ["migrate"]:
                fail(f"{self.who}: a Job of {self.name} that does not migrate")
                return
            for n in self.secret_env:
                if n.endswith("DATABASE_URL"):
                    run_env[n] = f"sqlite://{root}/job.db?mode=rwc"
            r = subprocess.run([self.exe, "migrate", "--config", cfg], env=run_env, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{self.who}: `migrate` with the manifest's config failed: {r.stderr.strip()}")
            return
        r = subprocess.run([self.exe, "check-config", "--config", cfg], env=run_env, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{self.who}: the manifest's config does not load: {r.stderr.strip()}")
            self.loads = False
            return
        if "secret" in r.stdout:
            fail(f"{self.who}: check-config printed a secret")
        printed = json.loads(r.stdout)
        mine = effective_config(text, {**env, **{n: run_env[n] for n in self.secret_env}}, ENV_PREFIX[self.name])
        for k, v in mine.items():
            got = printed.get(k)
            if isinstance(v, dict) and isinstance(got, dict):
                got = {kk: got.get(kk) for kk in v}  # the binary prints the table's defaults too
            if not k.endswith("_url") and got != v:
                fail(f"{self.who}: {k}: check-config says {printed.get(k)!r}, the checker read {v!r}")


def localize_value(v, local, mounts):
    if isinstance(v, str) and v.startswith("/") and mount_for(mounts, v):
        return local(v)
    if isinstance(v, dict):
        return {k: localize_value(x, local, mounts) for k, x in v.items()}
    if isinstance(v, list):
        return [localize_value(x, local, mounts) for x in v]
    return v


def localize(toml_text, local, mounts):
    return dump_toml(localize_value(tomllib.loads(toml_text), local, mounts))


def with_keys(committee_text, keys, urls=None):
    """A committee file with every node's key replaced by the checker's key for that index
    (and, for a real run, the URLs too)."""
    c = tomllib.loads(committee_text)
    for n in c.get("nodes", []):
        if n["x"] in keys:
            n["public_key"] = keys[n["x"]][0]
        if urls is not None:
            n["url"] = urls.get(n["x"], "http://127.0.0.1:9")
    return dump_toml(c)


def make_keys(kms_exe, tmp, indices):
    """A fresh node signing key per share index (from `cryptflow-kms keygen`) and an issuer
    key pair."""
    keys = {}
    d = Path(tmp) / "keys"
    d.mkdir(exist_ok=True)
    for x in indices:
        pem = d / f"node-{x}.pem"
        r = subprocess.run([kms_exe, "keygen", pem], capture_output=True, text=True, check=True)
        keys[x] = (r.stdout.strip(), pem)
    issuer = d / "issuer.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", issuer], check=True)
    subprocess.run(["openssl", "pkey", "-in", issuer, "-pubout", "-out", d / "issuer.pub"], check=True)
    keys["issuer_pub"] = d / "issuer.pub"
    return keys


# ---------------------------------------------------------------------------------------
# Ports, Services, probes, Prometheus


def check_ports(r, ct):
    c, who, cfg = ct.c, ct.who, ct.cfg
    ports = ct.ports
    for key, pname in LISTENERS.items():
        addr = cfg.get(key)
        if addr is None and pname not in ports:
            continue
        if addr is None or ports.get(pname) != port_of(addr):
            fail(f"{who}: containerPort `{pname}` {ports.get(pname)} but {key} = {addr}")
    annotations = ct.w["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        fail(f"{who}: no prometheus.io/scrape annotation")
    if int(annotations.get("prometheus.io/port", 0)) != ports.get("metrics"):
        fail(f"{who}: prometheus.io/port is not the metrics port")
    svcs = r.services_for(ct.labels, ct.ns)
    if not svcs:
        fail(f"{who}: no Service in namespace {ct.ns} selects its pods")
    numbers = set(ports.values())
    for s in svcs:
        for sp in s["spec"]["ports"]:
            t = sp.get("targetPort", sp["port"])
            if t not in ports and t not in numbers:
                fail(f"{who}: Service {s['metadata']['name']} port {sp.get('name')} targets unknown port {t}")
    probes = []
    for kind in ("readinessProbe", "livenessProbe"):
        p = c.get(kind, {}).get("httpGet")
        if not p:
            fail(f"{who}: no HTTP {kind}")
            continue
        number = ports.get(p["port"], p["port"])
        if number != ports.get("http"):
            fail(f"{who}: {kind} is not on the API port (`listen`)")
        probes.append(("listen", p["path"]))
    probes.append(("metrics_listen", annotations.get("prometheus.io/path", "/metrics")))
    return probes


def service_port_target(svc, ports, port_ref):
    """The container port number a Service port (by name or number) forwards to."""
    for sp in svc["spec"]["ports"]:
        if port_ref in (sp.get("name"), sp["port"]):
            t = sp.get("targetPort", sp["port"])
            return ports.get(t, t), sp["port"]
    return None, None


def in_cluster_service(r, url, ns):
    """The Service an in-cluster URL names, seen from namespace `ns`: `svc` (in `ns`),
    `svc.other`, `svc.other.svc` or `svc.other.svc.cluster.local` (in `other`)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    parts = host.split(".")
    if len(parts) == 1:
        return r.service(parts[0], ns)
    if parts[2:] not in ([], ["svc"], ["svc", "cluster", "local"]):
        return None
    return r.service(parts[0], parts[1])


def workload_ports(w):
    return {p["name"]: p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", []) if "name" in p}


def secret_of(ct, path):
    """The (namespace, Secret, key) a file of the container comes from, if a Secret."""
    m = mount_for(ct.mounts, path) if path else None
    if m is None:
        return None
    rel = path[len(m.path.rstrip("/")) + 1:]
    src = m.secret_files.get(rel) or m.secret_files.get("*")
    return (ct.ns, src[0], src[1] or rel) if src else None


def pod_secrets(ct):
    """Every Secret (namespace, name) the container's pod can read: volumes and environment."""
    spec = pod_spec(ct.w)
    out = set()
    for vol in spec.get("volumes", []):
        if "secret" in vol:
            out.add((ct.ns, vol["secret"]["secretName"]))
        out |= {(ct.ns, s["secret"]["name"]) for s in vol.get("projected", {}).get("sources", []) if "secret" in s}
    for c in spec["containers"] + spec.get("initContainers", []):
        out |= {(ct.ns, e["valueFrom"]["secretKeyRef"]["name"]) for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        out |= {(ct.ns, e["secretRef"]["name"]) for e in c.get("envFrom", []) if "secretRef" in e}
    return out


def committee_text(ct):
    path = ct.cfg.get("committee_file")
    m = mount_for(ct.mounts, path) if path else None
    return m.files.get(path[len(m.path.rstrip('/')) + 1:]) if m else None


def check_threshold(who, committee):
    """n/2 < t ≤ n, and a privacy threshold 2t − n of at least MIN_PRIVACY."""
    t, n = committee.get("threshold"), len(committee.get("nodes", []))
    if not isinstance(t, int) or not n / 2 < t <= n:
        fail(f"{who}: threshold {t} for {n} nodes: the services refuse t ≤ n/2 and t > n")
    elif 2 * t - n < MIN_PRIVACY:
        fail(
            f"{who}: (n, t) = ({n}, {t}) has privacy threshold 2t − n = {2 * t - n} < {MIN_PRIVACY}: "
            f"{2 * t - n} node(s) colluding with the aggregator could isolate a client's key"
        )


def check_committee(r, nodes, aggregators):
    """Share indices, each node's own keys and Secrets, the committee files, their threshold
    and their URLs. Returns the nodes' committee file (parsed), if any."""
    if not nodes and not aggregators:
        return None
    for setting in ("signing_key_file", "master_key_file"):
        owners = {}
        for n in nodes:
            src = secret_of(n, n.cfg.get(setting))
            secret = src[:2] if src else None
            if secret in owners:
                fail(f"{n.who}: its {setting} comes from the same Secret as {owners[secret]}'s ({src[0]}/{src[1]})")
            elif secret:
                owners[secret] = n.who
    # No Secret object is readable by two nodes' pods (in a namespace per node, none can be).
    readers = {}
    for n in nodes:
        for s in sorted(pod_secrets(n)):
            if s in readers:
                fail(f"{n.who}: reads Secret {s[0]}/{s[1]}, which {readers[s]} reads too: "
                     "no Secret is shared between nodes")
            else:
                readers[s] = n.who
    pinned = {}
    by_x = {}
    for n in nodes:
        x = n.share_index
        if x in by_x:
            fail(f"{n.who}: share index {x} is also {by_x[x].who}'s")
        by_x[x] = n
        text = committee_text(n)
        if text is not None:
            pinned[n.who] = tomllib.loads(text)
    if len({json.dumps(c, sort_keys=True) for c in pinned.values()}) > 1:
        fail(f"{r.target}: the key managers are not given the same committee file")
    committee = next(iter(pinned.values()), None)
    if committee:
        check_threshold(f"{r.target}: the key managers' committee file", committee)
        xs = {node["x"] for node in committee["nodes"]}
        for x, n in by_x.items():
            if x not in xs:
                fail(f"{n.who}: share index {x} is not in the committee file")
        check_pinned_urls(r, committee, by_x)
    for a in aggregators:
        text = committee_text(a)
        if text is None:
            continue
        copy_ = tomllib.loads(text)
        check_threshold(f"{a.who}: its committee copy", copy_)
        if committee:
            shape = lambda c: (c["threshold"], sorted((n["x"], n["public_key"]) for n in c["nodes"]))  # noqa: E731
            if shape(copy_) != shape(committee):
                fail(f"{a.who}: its committee copy has another threshold, indices or keys than the key managers'")
        for node in copy_["nodes"]:
            x, url = node["x"], node["url"]
            svc = in_cluster_service(r, url, a.ns)
            if x in by_x:
                n = by_x[x]
                if svc is None or svc not in r.services_for(n.labels, n.ns):
                    fail(f"{a.who}: committee URL {url} of node {x} is not a Service of {n.who} (namespace {n.ns})")
                    continue
                port = urllib.parse.urlsplit(url).port
                target, _ = service_port_target(svc, n.ports, port)
                want = n.cfg.get("internal_listen") or n.cfg.get("listen")
                if target != port_of(want):
                    fail(
                        f"{a.who}: committee URL {url} of node {x} is not the node's internal port "
                        f"{port_of(want)} (through {ns_of(svc)}/{svc['metadata']['name']})"
                    )
            elif svc is not None:
                fail(f"{a.who}: committee URL {url} of node {x} names "
                     f"{ns_of(svc)}/{svc['metadata']['name']}, not node {x}'s Service")
            elif not url.startswith("https://"):
                fail(f"{a.who}: committee URL {url} of a node in another cluster is not HTTPS")
    return committee


def check_committee_layout(r, nodes, aggregators, committee):
    """A committee deployed in one cluster (more than one node in the render): the whole
    committee, a namespace per node apart from the aggregator's, and per namespace the
    policies that keep the node to itself. (Own Secrets and databases: check_committee and
    check_databases, for every render.)"""
    if len(nodes) < 2:
        return
    by_ns = {}
    for n in nodes:
        by_ns.setdefault(n.ns, []).append(n)
    for ns, ns_nodes in sorted(by_ns.items()):
        if len(ns_nodes) > 1:
            names = ", ".join(n.who.split(": ", 1)[1] for n in ns_nodes)
            fail(f"{r.target}: key managers {names} share namespace {ns}: one namespace per node")
    for a in aggregators:
        for n in by_ns.get(a.ns, []):
            fail(f"{n.who}: runs in the aggregator's namespace {a.ns}")
    if committee:
        deployed = sorted(n.share_index for n in nodes)
        xs = sorted(node["x"] for node in committee["nodes"])
        if deployed != xs:
            fail(f"{r.target}: a committee in one cluster deploys all of it: nodes {xs} in the committee "
                 f"file, {deployed} deployed")
    for ns in sorted(by_ns):
        for direction in ("Ingress", "Egress"):
            for n in by_ns[ns]:
                if not any(p["spec"]["podSelector"] != {} for p in policies_for(r, ns, n.labels, direction)):
                    fail(f"{n.who}: no NetworkPolicy of its own in namespace {ns} for its {direction.lower()}")


def ingress_routes(r):
    """(host, path, service, service port ref, ingress) for every Ingress rule; the Service
    is looked up in the Ingress's namespace (None if missing)."""
    for ing in r.of("Ingress"):
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                svc = p["backend"].get("service")
                if svc:
                    port = svc["port"].get("name", svc["port"].get("number"))
                    yield rule.get("host"), p["path"], svc["name"], port, ing


def check_pinned_urls(r, committee, by_x):
    routes = list(ingress_routes(r))
    for node in committee["nodes"]:
        x, url = node["x"], node["url"]
        if not url.startswith("https://"):
            fail(f"{r.target}: committee URL {url} of node {x} is not HTTPS")
            continue
        if x not in by_x:
            continue
        n = by_x[x]
        host = urllib.parse.urlsplit(url).hostname
        ok = False
        for h, path, sname, port, ing in routes:
            svc = r.service(sname, ns_of(ing))
            if h != host or svc is None or svc not in r.services_for(n.labels, n.ns):
                continue
            if not "/v1/".startswith(path.rstrip("/") + "/"):
                continue
            target, _ = service_port_target(svc, n.ports, port)
            ok = ok or target == port_of(n.cfg["listen"])
        if not ok:
            fail(f"{n.who}: its committee URL {url} is not an Ingress host routing /v1/ to its client port")


def check_ingresses(r, nodes):
    hosts = {}
    for ing in r.of("Ingress"):
        who = f"Ingress {ns_of(ing)}/{ing['metadata']['name']}"
        tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
        for rule in ing["spec"].get("rules", []):
            if rule.get("host") not in tls_hosts:
                fail(f"{r.target}: {who}: host {rule.get('host')} has no TLS")
            if rule.get("host") in hosts and hosts[rule.get("host")] != who:
                fail(f"{r.target}: {who}: host {rule.get('host')} is also {hosts[rule.get('host')]}'s")
            hosts[rule.get("host")] = who
    for host, _, sname, port, ing in ingress_routes(r):
        who = f"Ingress {ns_of(ing)}/{ing['metadata']['name']}"
        svc = r.service(sname, ns_of(ing))
        if svc is None:
            fail(f"{r.target}: {who} routes to a missing Service {sname} (an Ingress reaches its own namespace only)")
            continue
        if not any(port in (sp.get("name"), sp["port"]) for sp in svc["spec"]["ports"]):
            fail(f"{r.target}: {who} routes to a missing port {port} of {sname}")
        for n in nodes:
            if svc not in r.services_for(n.labels, n.ns):
                continue
            target, _ = service_port_target(svc, n.ports, port)
            annotations = ing["metadata"].get("annotations", {})
            if target in (n.ports.get("metrics"),):
                fail(f"{r.target}: {who} exposes the metrics of {n.who}")
            if target == n.ports.get("internal") and not any(a in annotations for a in RESTRICTING_ANNOTATIONS):
                fail(f"{r.target}: {who} exposes the internal port of {n.who} to everyone")


def check_namespaces(r):
    """Every namespace a workload runs in is created here, with restricted pod security."""
    for ns in sorted({ns_of(w) for w in r.workloads()}):
        obj = r.namespaces.get(ns)
        if obj is None:
            fail(f"{r.target}: namespace {ns} has workloads but no Namespace object")
        elif (obj["metadata"].get("labels") or {}).get(POD_SECURITY) != "restricted":
            fail(f"{r.target}: namespace {ns} does not enforce the restricted pod security standard")


# ---------------------------------------------------------------------------------------
# Databases


class Database:
    """Where a service's database is: a Service of the render (and its pods), or only a URL
    or a Secret we cannot see into."""

    def __init__(self, ident, desc, svc=None, pods=(), port=DB_PORT):
        self.ident, self.desc, self.svc, self.pods, self.port = ident, desc, svc, list(pods), port


def database_of(r, ct):
    var = ENV_PREFIX[ct.name] + "DATABASE_URL"
    if var in ct.secret_env:
        name, key = ct.secret_env[var]
        url = r.secret_value(ct.ns, name, key)
        if url is None:  # a Secret the operator creates (prod): its name stands for the database
            return Database(("secret", ct.ns, name, key), f"the URL in Secret {ct.ns}/{name}")
    else:
        url = ct.env.get(var) or tomllib.loads(ct.toml_text).get("database_url")
        if url is None:
            return None
    if url.startswith("sqlite:"):
        return Database(("url", ct.ns, ct.w["metadata"]["name"], url), url)
    svc = in_cluster_service(r, url, ct.ns)
    if svc is None:
        return Database(("url", url), url)
    sns, sname = ns_of(svc), svc["metadata"]["name"]
    pods = [
        (ns, labels, w) for ns, labels, w in r.pods()
        if ns == sns and selects({"matchLabels": svc["spec"].get("selector") or {}}, labels)
    ]
    port = urllib.parse.urlsplit(url).port or DB_PORT
    return Database(("service", sns, sname), f"Service {sns}/{sname}", svc, pods, port)


def check_databases(r, services, jobs):
    """Every service has a database of its own; a database in the render is reachable from
    its own service and migration Job only, and its service's egress reaches it."""
    owners = {}
    for ct in services:
        db = database_of(r, ct)
        if db is None:
            fail(f"{ct.who}: no database URL")
            continue
        if db.ident in owners:
            fail(f"{ct.who}: shares its database ({db.desc}) with {owners[db.ident].who}")
        else:
            owners[db.ident] = ct
        if db.svc is None:
            continue
        if not db.pods:
            fail(f"{ct.who}: its database {db.desc} selects no pods")
        for ns, labels, w in db.pods:
            number, _ = service_port_target(db.svc, workload_ports(w), db.port)
            name = next((k for k, v in workload_ports(w).items() if v == number), None)
            peers = ingress_peers(r, ns, labels, number, name)
            reaches = lambda o: any(peer_admits(r, p, ns, o.ns, o.labels) for p in peers)  # noqa: E731
            if not reaches(ct):
                fail(f"{ct.who}: the policies of its database {workload_name(r, w)} do not admit it")
            for other in services + jobs:
                if other is ct or (other in jobs and other.name == ct.name and other.ns == ct.ns):
                    continue
                if reaches(other):
                    fail(f"{workload_name(r, w)}: the database of {ct.who} admits {other.who}")
            if not any(
                rule_ports_match(rule, number, name)
                and any(peer_admits(r, p, ct.ns, ns, labels) for p in rule.get("to") or [None])
                for rule in egress_rules(r, ct.ns, ct.labels)
            ):
                fail(f"{ct.who}: its egress policies do not reach its database {workload_name(r, w)}")


# ---------------------------------------------------------------------------------------
# Network policies


def rule_ports_match(rule, number, name):
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in p or p["port"] in (number, name):
            return True
        if isinstance(p["port"], int) and p.get("endPort") and p["port"] <= number <= p["endPort"]:
            return True
    return False


def describe(selector):
    if selector == {}:
        return "(all)"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    parts += [f"{e['key']} {e['operator']} {e.get('values', [])}" for e in selector.get("matchExpressions") or []]
    return ",".join(parts)


def peer_name(peer, policy_ns):
    if peer is None:
        return "anyone"
    if "ipBlock" in peer:
        return f"ip:{peer['ipBlock']['cidr']}"
    ns = peer.get("namespaceSelector")
    pods = peer.get("podSelector")
    out = f"ns:{policy_ns}" if ns is None else f"namespaces:{describe(ns)}"
    return out + (f"+pods:{describe(pods)}" if pods is not None else "")


def pinned_namespaces(peer, policy_ns):
    """The namespaces a peer is confined to by name, or None. A peer without a
    namespaceSelector is in the policy's namespace; a namespaceSelector confines it only
    through the name label (any other label may be put on any namespace)."""
    if peer is None or "ipBlock" in peer:
        return None
    sel = peer.get("namespaceSelector")
    if sel is None:
        return {policy_ns}
    names = None
    if NAME_LABEL in (sel.get("matchLabels") or {}):
        names = {sel["matchLabels"][NAME_LABEL]}
    for e in sel.get("matchExpressions") or []:
        if e["key"] == NAME_LABEL and e["operator"] == "In":
            values = set(e.get("values") or [])
            names = values if names is None else names & values
    return names


def peer_admits(r, peer, policy_ns, ns, labels):
    """Whether a peer of a policy in `policy_ns` admits pods with `labels` in `ns` (None: a
    rule without peers, i.e. anyone)."""
    if peer is None:
        return True
    if "ipBlock" in peer:
        return False
    sel = peer.get("namespaceSelector")
    if sel is None and ns != policy_ns:
        return False
    if sel is not None and not selects(sel, r.ns_labels(ns)):
        return False
    return peer.get("podSelector") is None or selects(peer["podSelector"], labels)


def whole_namespace(peer, policy_ns, ns):
    """A peer that is all of namespace `ns` (the ingress controller's, Prometheus's)."""
    return pinned_namespaces(peer, policy_ns) == {ns} and peer.get("podSelector") in (None, {})


def policies_for(r, ns, labels, direction):
    return [
        p for p in r.of("NetworkPolicy")
        if ns_of(p) == ns and selects(p["spec"]["podSelector"], labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]


def ingress_peers(r, ns, labels, number, name):
    """The peers (None: anyone) that may connect to a pod with `labels` in `ns` on a port;
    all of them belong to policies in `ns`."""
    out = []
    for p in policies_for(r, ns, labels, "Ingress"):
        for rule in p["spec"].get("ingress", []):
            if rule_ports_match(rule, number, name):
                out += rule.get("from") or [None]
    return out


def egress_rules(r, ns, labels):
    return [rule for p in policies_for(r, ns, labels, "Egress") for rule in p["spec"].get("egress", [])]


def check_network_policies(r, nodes, aggregators):
    if not nodes and not aggregators:
        return
    for ns in sorted({ct.ns for ct in nodes + aggregators}):
        if not any(
            ns_of(p) == ns and p["spec"]["podSelector"] == {}
            and set(p["spec"].get("policyTypes", [])) >= {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")
            for p in r.of("NetworkPolicy")
        ):
            fail(f"{r.target}: no default-deny NetworkPolicy in namespace {ns}")
    # Nodes whose internal port an Ingress that admits listed addresses only routes to.
    restricted = set()
    for _, _, sname, port, ing in ingress_routes(r):
        svc = r.service(sname, ns_of(ing))
        annotations = ing["metadata"].get("annotations", {})
        for n in nodes:
            if svc is None or svc not in r.services_for(n.labels, n.ns):
                continue
            if any(a in annotations for a in RESTRICTING_ANNOTATIONS) and \
                    service_port_target(svc, n.ports, port)[0] == n.ports.get("internal"):
                restricted.add(n.who)
    # The aggregator's namespaces, by name: where a node's internal port may be reached from.
    aggregator_namespaces = {a.ns for a in aggregators}
    for ct in nodes + aggregators:
        for pname, number in ct.ports.items():
            peers = ingress_peers(r, ct.ns, ct.labels, number, pname)
            names = sorted(peer_name(p, ct.ns) for p in peers)
            for p in peers:
                if p is None or (p.get("ipBlock", {}).get("cidr", "").startswith("0.0.0.0/0")):
                    fail(f"{ct.who}: port {pname} is open to anyone")
                elif "ipBlock" not in p and pinned_namespaces(p, ct.ns) is None:
                    fail(f"{ct.who}: port {pname} is open to {peer_name(p, ct.ns)}: namespaces not named")
            if pname == "http" and not any(whole_namespace(p, ct.ns, INGRESS_NAMESPACE) for p in peers if p):
                fail(f"{ct.who}: the ingress controller cannot reach port {pname}")
            if pname == "metrics" and (
                not peers or not all(p and whole_namespace(p, ct.ns, MONITORING_NAMESPACE) for p in peers)
            ):
                fail(f"{ct.who}: metrics port reachable from {names}, not only namespace {MONITORING_NAMESPACE}")
            if pname != "internal":
                continue
            allowed = aggregator_namespaces or {ct.ns}
            for p in peers:
                pinned = pinned_namespaces(p, ct.ns)
                aggregator_pods = (
                    p is not None and pinned is not None and pinned <= allowed
                    and (p.get("podSelector", {}).get("matchLabels") or {}).get("app.kubernetes.io/name")
                    == "cryptflow-aggregator"
                )
                via_restricted_ingress = (
                    p is not None and whole_namespace(p, ct.ns, INGRESS_NAMESPACE) and ct.who in restricted
                )
                if not aggregator_pods and not via_restricted_ingress:
                    fail(
                        f"{ct.who}: its internal port is reachable from {peer_name(p, ct.ns)}, not only the "
                        f"aggregator's pods (namespace {', '.join(sorted(allowed))})"
                    )
            for a in aggregators:
                if not any(peer_admits(r, p, ct.ns, a.ns, a.labels) for p in peers):
                    fail(f"{ct.who}: {a.who} cannot reach its internal port")
            if ct.who in restricted and not any(whole_namespace(p, ct.ns, INGRESS_NAMESPACE) for p in peers if p):
                fail(f"{ct.who}: an Ingress routes to its internal port but the ingress controller cannot reach it")
            if not aggregators and ct.who not in restricted:
                fail(f"{ct.who}: no aggregator here and no Ingress for the aggregator to reach its internal port")
    for n in nodes:
        db = database_of(r, n)
        db_pods = [(ns, labels) for ns, labels, _ in db.pods] if db and db.svc else None
        for rule in egress_rules(r, n.ns, n.labels):
            numbers = {p.get("port", "any") for p in rule.get("ports") or [{}]}
            other_ports = sorted(map(str, numbers - {DB_PORT, DNS_PORT}))
            if other_ports:
                fail(f"{n.who}: egress to port(s) {other_ports}: key managers call nothing but their database and DNS")
                continue
            to = rule.get("to")
            if numbers == {DNS_PORT}:
                if not to or any(pinned_namespaces(p, n.ns) != {DNS_NAMESPACE} for p in to):
                    peers = [peer_name(p, n.ns) for p in to or [None]]
                    fail(f"{n.who}: DNS egress to {peers}, not only namespace {DNS_NAMESPACE}")
            elif db_pods is not None:
                # Its database is here: egress to it and nowhere else.
                others = [(ns, labels) for ns, labels, _ in r.pods() if (ns, labels) not in db_pods]
                for p in to or [None]:
                    if pinned_namespaces(p, n.ns) is None or \
                            any(peer_admits(r, p, n.ns, ns, labels) for ns, labels in others):
                        fail(f"{n.who}: egress on port {DB_PORT} to {peer_name(p, n.ns)}, "
                             f"not only its database {db.desc}")
    for a in aggregators:
        rules = egress_rules(r, a.ns, a.labels)
        for n in nodes:
            internal = n.ports.get("internal") or n.ports.get("http")
            if not any(
                rule_ports_match(rule, internal, None)
                and any(peer_admits(r, p, a.ns, n.ns, n.labels) for p in rule.get("to") or [None])
                for rule in rules
            ):
                fail(f"{a.who}: no egress to {n.who}'s internal port")


# ---------------------------------------------------------------------------------------
# The real binaries


def wait_healthy(url, proc, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if get(url) == 200:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def serve(ct, root, keys, committee_urls=None):
    """Starts the binary with the manifest's configuration made local; returns (process,
    ports) or None."""
    if not ct.loads:
        return None  # reported by check_config
    text, env = ct.materialize(root, keys, committee_urls)
    cfg = effective_config(text, env, ENV_PREFIX[ct.name])
    ports = {}
    for key in LISTENERS:
        if cfg.get(key):
            ports[key] = free_port()
            cfg[key] = f"127.0.0.1:{ports[key]}"
    cfg["database_url"] = f"sqlite://{root}/service.db?mode=rwc"
    if cfg.pop("s3", None) is not None:
        # The bucket is not reachable from here: the replica is served on a local directory
        # (check-config above loaded the [s3] table itself).
        cfg["blob_dir"] = str(root / "blobs")
    path = root / "serve.toml"
    path.write_text(dump_toml(cfg))
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTFLOW_")}
    run_env["RUST_LOG"] = "warn"
    r = subprocess.run([ct.exe, "migrate", "--config", path], env=run_env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{ct.who}: migrate failed: {r.stderr.strip()}")
        return None
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([ct.exe, "serve", "--config", path], stdout=subprocess.DEVNULL, stderr=log, env=run_env)
    if not wait_healthy(f"http://127.0.0.1:{ports['listen']}/healthz", proc):
        proc.terminate()
        proc.wait(timeout=30)
        fail(f"{ct.who}: did not start with the manifest's config: {(root / 'serve.log').read_text().strip()[-500:]}")
        return None
    return proc, ports


def probe(ct, ports, paths):
    for port_key, path in paths:
        status = get(f"http://127.0.0.1:{ports[port_key]}{path}")
        if status != 200:
            fail(f"{ct.who}: GET {path} on {port_key} answered {status}, the manifest probes it")


def serve_and_probe(nodes, aggregators, probes, tmp, keys):
    running = []
    try:
        internal_urls = {}
        for n in nodes:
            started = serve(n, Path(tmp) / "serve" / n.key, keys)
            if not started:
                continue
            proc, ports = started
            running.append(proc)
            probe(n, ports, probes[id(n)])
            internal_urls[n.share_index] = f"http://127.0.0.1:{ports.get('internal_listen', ports['listen'])}"
            if "internal_listen" in ports:
                # The Ingress sends clients to `listen`: it must not serve the aggregator's
                # endpoints, which the internal listener does (behind a token).
                public = get(f"http://127.0.0.1:{ports['listen']}/v1/rounds/r-1/deposits")
                internal = get(f"http://127.0.0.1:{ports['internal_listen']}/v1/rounds/r-1/deposits")
                if public != 404 or internal in (None, 404):
                    fail(f"{n.who}: client port answers {public} to an aggregator-only endpoint (internal port: {internal})")
        for a in aggregators:
            started = serve(a, Path(tmp) / "serve" / a.key, keys, internal_urls)
            if not started:
                continue
            proc, ports = started
            running.append(proc)
            probe(a, ports, probes[id(a)])
    finally:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait(timeout=30)
    return len(running)


# ---------------------------------------------------------------------------------------


def check_target(r, bin_dir, tmp, readme):
    readme_rows = readme_entries(readme)
    containers = []
    for w in r.workloads():
        who = workload_name(r, w)
        ns = ns_of(w)
        spec = pod_spec(w)
        for vol in spec.get("volumes", []):
            names = [vol.get("secret", {}).get("secretName")]
            names += [s["secret"]["name"] for s in vol.get("projected", {}).get("sources", []) if "secret" in s]
            for secret in filter(None, names):
                if (ns, secret) not in r.secrets and not documented(readme_rows, secret):
                    fail(f"{who}: Secret {secret} is not documented in k8s/README.md")
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and (ns, ref["name"]) not in r.secrets and not documented(readme_rows, ref["name"], ref["key"]):
                    fail(f"{who}: Secret {ref['name']} (key `{ref['key']}`) is not documented in k8s/README.md")
            name, exe = binary(bin_dir, c["image"])
            if name not in SERVICES:
                continue
            if dockerfile_entrypoint(name) != name:
                fail(f"{who}: the image's Dockerfile does not run the {name} binary")
            if not exe.exists():
                fail(f"{exe} not found (build the binaries first)")
                continue
            ct = Container(r, w, c, name, exe)
            if ct.cfg is not None:
                containers.append(ct)
    for ing in r.of("Ingress"):
        for t in ing["spec"].get("tls", []):
            s = t.get("secretName")
            if s and (ns_of(ing), s) not in r.secrets and not documented(readme_rows, s):
                fail(f"{r.target}: Ingress {ns_of(ing)}/{ing['metadata']['name']}: Secret {s} is not "
                     "documented in k8s/README.md")
    services = [ct for ct in containers if not ct.is_job]
    nodes = [ct for ct in services if ct.name == "cryptflow-kms"]
    aggregators = [ct for ct in services if ct.name == "cryptflow-aggregator"]
    if len(aggregators) > 1:
        fail(f"{r.target}: more than one aggregator")
    # A migration Job migrates the database a service uses.
    jobs = [ct for ct in containers if ct.is_job]
    for job in jobs:
        dbs = {(ct.ns,) + ct.secret_env[n] for ct in services if ct.name == job.name for n in ct.secret_env}
        for n, ref in job.secret_env.items():
            if n.endswith("DATABASE_URL") and (job.ns,) + ref not in dbs:
                fail(f"{job.who}: migrates a database ({job.ns}/{ref[0]}) no {job.name} in its namespace uses")
    kms_exe = Path(bin_dir) / "cryptflow-kms"
    indices = set()
    for ct in containers:
        if ct.name == "cryptflow-kms" and not ct.is_job:
            indices.add(ct.share_index)
        text = committee_text(ct) if not ct.is_job else None
        if text:
            indices |= {n["x"] for n in tomllib.loads(text).get("nodes", [])}
    if not kms_exe.exists():
        fail(f"{kms_exe} not found: the checker makes node keys with `cryptflow-kms keygen`")
        return len(containers), 0
    keys = make_keys(kms_exe, tmp, sorted(indices))
    probes = {}
    for ct in containers:
        ct.check_files(readme_rows)
        ct.check_config(Path(tmp) / "check" / ct.key, keys)
        if not ct.is_job:
            probes[id(ct)] = check_ports(r, ct)
    check_namespaces(r)
    for h in r.of("HorizontalPodAutoscaler"):
        ref = h["spec"]["scaleTargetRef"]
        if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] and ns_of(w) == ns_of(h)
                   for w in r.workloads()):
            fail(f"{r.target}: HorizontalPodAutoscaler {ns_of(h)}/{h['metadata']['name']} scales "
                 f"{ref['kind']} {ref['name']}, which is not in the render")
    committee = check_committee(r, nodes, aggregators)
    check_committee_layout(r, nodes, aggregators, committee)
    check_databases(r, services, jobs)
    check_ingresses(r, nodes)
    check_network_policies(r, nodes, aggregators)
    served = serve_and_probe(nodes, aggregators, probes, tmp, keys)
    return len(containers), served


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    p.add_argument("--kube-version", default="1.32.0")
    p.add_argument("targets", nargs="*", help="base, overlays/<name> (default: all)")
    args = p.parse_args()
    readme = (ROOT / "k8s" / "README.md").read_text()
    for target in args.targets or targets():
        docs = render(target)
        if docs is None:
            continue
        validate(target, docs, args.kube_version)
        with tempfile.TemporaryDirectory() as tmp:
            checked, served = check_target(Render(target, docs), args.bin_dir, tmp, readme)
        print(
            f"{target}: {len(docs)} objects rendered and validated (Kubernetes {args.kube_version}); "
            f"{checked} containers checked against the binaries, {served} server(s) started and probed"
        )
    if failures:
        print(f"{len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print("k8s manifests: OK")


if __name__ == "__main__":
    main()

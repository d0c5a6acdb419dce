"""Structural checks of deploy/ that no registry tool makes: files that refer to each other
agree (compose mounts, Dockerfile COPY sources, Kubernetes selectors, ports, volumes and the
paths telegate.toml names), the policy ConfigMap is the pack in packs/, the grace period
covers telegate's shutdown, the dashboard is well formed, and every metric queried is
documented. Also writes the dashboard's queries as a rules file for `promtool check rules`,
and lists the metric names queried. Run by scripts/check-deploy; exits 1 on any problem."""

import base64
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------- compose


def check_compose(root):
    deploy = root / "deploy"
    path = deploy / "compose.yaml"
    doc = load_yaml_docs(path)[0]
    services = doc.get("services", {})
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = (deploy / build.get("context", ".")).resolve()
            if not ctx.is_dir():
                problem(path, f"{name}: build context {ctx} does not exist")
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problem(path, f"{name}: Dockerfile {dockerfile} does not exist")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (deploy / src).exists():
                    problem(path, f"{name}: bind mount source {src} does not exist")
    kafka = services.get("kafka", {})
    image = kafka.get("image", "")
    if not image.startswith("apache/kafka:"):
        problem(path, f"kafka: image {image!r} is not the official apache/kafka")
    env = kafka.get("environment", {})
    cluster = str(env.get("CLUSTER_ID", ""))
    try:
        if len(base64.urlsafe_b64decode(cluster + "==")) != 16 or len(cluster) != 22:
            raise ValueError
    except ValueError:
        problem(path, f"kafka: CLUSTER_ID {cluster!r} is not a base64 UUID (22 characters, 16 bytes)")
    for key in ("KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_NODE_ID"):
        if key not in env:
            problem(path, f"kafka: {key} missing: KRaft needs it")
    # telegate's config file, as mounted, and the ports it listens on.
    tg = services.get("telegate", {})
    conf_src = next((v.split(":")[0] for v in tg.get("volumes", []) if v.endswith("/etc/telegate/telegate.toml:ro")), None)
    if conf_src is None:
        problem(path, "telegate: no config file mounted at /etc/telegate/telegate.toml")
        return
    conf = tomllib.loads((deploy / conf_src).read_text())
    published = {p.split(":")[-1] for p in tg.get("ports", [])}
    for key, addr in (("mqtt.tls_listen", conf.get("mqtt", {}).get("tls_listen")),
                      ("metrics_listen", conf.get("metrics_listen")),
                      ("admin.listen", conf.get("admin", {}).get("listen"))):
        if addr and addr.rsplit(":", 1)[1] not in published:
            problem(path, f"telegate: {key} port {addr} is not published")
    if conf.get("kafka", {}).get("bootstrap", "").split(":")[0] not in services:
        problem(deploy / conf_src, "kafka.bootstrap does not name a compose service")
    grace = parse_duration(tg.get("stop_grace_period", "10s"))
    need = 2 * parse_duration(conf.get("shutdown_timeout", "15s")) + 2
    if grace <= need:
        problem(path, f"telegate: stop_grace_period {grace}s must exceed {need}s (2 x shutdown_timeout + 2 s)")
    prom = services.get("prometheus", {})
    for v in prom.get("volumes", []):
        if v.split(":")[0].endswith("prometheus.yml"):
            pconf = yaml.safe_load((deploy / v.split(":")[0]).read_text())
            targets = [t for sc in pconf.get("scrape_configs", []) for s in sc.get("static_configs", []) for t in s.get("targets", [])]
            metrics_port = conf.get("metrics_listen", "0.0.0.0:9898").rsplit(":", 1)[1]
            if f"telegate:{metrics_port}" not in targets:
                problem(v.split(":")[0], f"does not scrape telegate:{metrics_port}")


def parse_duration(text):
    """Seconds in a humantime or compose duration ("15s", "1m", "40s")."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text).strip())
    if not m:
        raise SystemExit(f"cannot read the duration {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": 60 * n, "h": 3600 * n}[unit]


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(root, binary):
    path = root / "deploy" / "Dockerfile"
    lines = []
    for raw in path.read_text().replace("\\\n", " ").splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            lines.append(raw)
    stages, final_user, exposed, installed = [], None, set(), set()
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append(m.group(2))
            final_user = None
            installed = set()
        elif word == "RUN" and "apt-get install" in rest:
            # The packages this stage installs (the last stage's count for the runtime).
            for cmd in rest.split("&&"):
                if "apt-get install" in cmd:
                    installed.update(a for a in cmd.split("install", 1)[1].split() if not a.startswith("-"))
        elif word == "COPY":
            args = rest.split()
            src_from = next((a.split("=", 1)[1] for a in args if a.startswith("--from=")), None)
            paths = [a for a in args if not a.startswith("--")]
            if src_from is not None:
                if src_from not in stages[:-1]:
                    problem(path, f"COPY --from={src_from}: no earlier stage of that name")
            else:
                for src in paths[:-1]:
                    if not (root / src).exists():
                        problem(path, f"COPY {src}: not in the repository (the build context)")
        elif word == "USER":
            final_user = rest.split(":")[0]
        elif word == "EXPOSE":
            exposed.update(rest.split())
    if len(stages) < 2:
        problem(path, "not a multi-stage build")
    if final_user is None or not final_user.isdigit() or final_user == "0":
        problem(path, f"the final stage must run as a numeric non-root USER (found {final_user!r})")
    for port in ("8883", "9898"):
        if port not in exposed:
            problem(path, f"EXPOSE lacks {port}")
    # The runtime image is Debian slim, which holds Debian's essential packages and what they
    # depend on. Every library the binary links must come from that set. The binary is built
    # on this machine, Debian 12 like the image's build stage.
    base = essential_closure(installed)
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"=>\s+(\S+)", out)
    for lib in libs:
        owner = subprocess.run(["dpkg", "-S", str(Path(lib).resolve())], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0].strip()
        if pkg not in base:
            problem(path, f"the binary links {lib} from {pkg or 'no package'}, which is neither in Debian's essential set nor installed in the runtime stage")
    names = ", ".join(Path(lib).name for lib in libs)
    extra = f" and what the runtime stage installs ({', '.join(sorted(installed))})" if installed else ""
    print(f"  the binary links {names}: all from Debian's essential set{extra}")


def essential_closure(also=()):
    """The installed packages marked Essential, those in `also`, and everything they
    (pre-)depend on."""
    fmt = "${Package}\t${Essential}\t${Pre-Depends}, ${Depends}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    deps, todo = {}, []
    for line in out.splitlines():
        pkg, essential, rel = line.split("\t")
        names = []
        for alt in rel.split(","):
            first = alt.split("|")[0].strip()
            if first:
                names.append(re.split(r"[\s:(]", first)[0])
        deps[pkg.split(":")[0]] = names
        if essential == "yes" or pkg.split(":")[0] in also:
            todo.append(pkg.split(":")[0])
    seen = set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(deps.get(p, []))
    return seen


# ---------------------------------------------------------------- Kubernetes


def check_kubernetes(root):
    k8s = root / "deploy" / "k8s"
    kust = load_yaml_docs(k8s / "kustomization.yaml")[0]
    listed = kust.get("resources", [])
    for r in listed:
        if not (k8s / r).is_file():
            problem(k8s / "kustomization.yaml", f"resource {r} does not exist")
    for f in sorted(k8s.glob("*.yaml")):
        if f.name not in listed and f.name not in ("kustomization.yaml", "secrets.example.yaml"):
            problem(k8s / "kustomization.yaml", f"{f.name} is not listed in resources")
    objs = {}
    for r in listed + ["secrets.example.yaml"]:
        for d in load_yaml_docs(k8s / r):
            objs[(d["kind"], d["metadata"]["name"])] = (r, d)
    dep_file, dep = objs[("Deployment", "telegate")]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    sel = spec["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        problem(dep_file, "the selector does not match the pod template's labels")
    for kind, name in objs:
        r, d = objs[(kind, name)]
        s = None
        if kind == "Service":
            s = d["spec"]["selector"]
        elif kind == "PodDisruptionBudget":
            s = d["spec"]["selector"]["matchLabels"]
        if s is not None and any(labels.get(k) != v for k, v in s.items()):
            problem(r, f"{kind} {name}: its selector matches no gateway pod")
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for kind, name in objs:
        r, d = objs[(kind, name)]
        if kind == "Service":
            for p in d["spec"]["ports"]:
                if p["targetPort"] not in port_names:
                    problem(r, f"Service {name}: targetPort {p['targetPort']} is no container port")
    probes = {k: c.get(k) for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    if probes["readinessProbe"] is None or probes["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problem(dep_file, "readiness must be /readyz")
    if probes["livenessProbe"] is None or probes["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problem(dep_file, "liveness must be /healthz")
    for k, p in probes.items():
        if p and port_names.get(p["httpGet"]["port"]) != 9898:
            problem(dep_file, f"{k} is not on the metrics port 9898")
    if port_names.get("mqtts") != 8883:
        problem(dep_file, "no container port mqtts 8883")
    lb = [d for (kind, _), (_, d) in objs.items() if kind == "Service" and d["spec"].get("type") == "LoadBalancer"]
    if not any(p["port"] == 8883 for d in lb for p in d["spec"]["ports"]):
        problem("deploy/k8s", "no LoadBalancer Service for MQTT over TLS on 8883")
    if ("PodDisruptionBudget", "telegate") not in objs:
        problem("deploy/k8s", "no PodDisruptionBudget")
    for res in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in c.get("resources", {}).get(res, {}):
                problem(dep_file, f"resources.{res}.{what} missing")
    # The config file: where it is mounted, what it names, and the grace period.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_arg = c["args"][c["args"].index("--config") + 1]

    def source_of(file_path):
        """The ConfigMap or Secret object and key that a mounted file comes from."""
        p = Path(file_path)
        name = mounts.get(str(p.parent))
        if name is None:
            problem(dep_file, f"{file_path}: no volume mounted at {p.parent}")
            return None
        v = volumes[name]
        if "configMap" in v:
            key = ("ConfigMap", v["configMap"]["name"])
        elif "secret" in v:
            key = ("Secret", v["secret"]["secretName"])
        else:
            return None
        if key not in objs:
            problem(dep_file, f"{file_path}: {key[0]} {key[1]} is not defined (secrets.example.yaml has the Secrets)")
            return None
        data = objs[key][1].get("data") or objs[key][1].get("stringData") or {}
        if p.name not in data:
            problem(objs[key][0], f"{key[0]} {key[1]} has no key {p.name}, which {file_path} needs")
            return None
        return data[p.name]

    conf_text = source_of(config_arg)
    if conf_text is None:
        return
    conf = tomllib.loads(conf_text)
    named = [conf.get("policy"), conf.get("key_file")]
    named += [conf.get("mqtt", {}).get(k) for k in ("tls_cert", "tls_key", "client_ca", "client_crl")]
    named += [conf.get("admin", {}).get(k) for k in ("token_file", "tls_cert", "tls_key", "client_ca")]
    for f in filter(None, named):
        source_of(f)
    pack = source_of(conf["policy"])
    packs = {p.read_text(): p.name for p in (root / "packs").glob("*.toml")}
    if pack is not None and pack not in packs:
        problem(objs[("ConfigMap", "telegate-policy")][0], "the pack is not byte for byte any file in packs/")
    for key, port in (("mqtt.tls_listen", conf["mqtt"].get("tls_listen")), ("metrics_listen", conf.get("metrics_listen")), ("admin.listen", conf.get("admin", {}).get("listen"))):
        if port and int(port.rsplit(":", 1)[1]) not in port_names.values():
            problem(dep_file, f"{key} {port} is not a container port")
    shutdown = parse_duration(conf.get("shutdown_timeout", "15s"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = pre_stop + 2 * shutdown + 2
    if grace <= need:
        problem(dep_file, f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + 2 x shutdown_timeout {shutdown} s + 2 s = {need} s")
    print(f"  grace {grace} s > preStop {pre_stop} s + 2 x shutdown_timeout {shutdown:g} s + 2 s; pack = packs/{packs.get(pack)}")


# ---------------------------------------------------------------- Grafana


def check_grafana(root, rules_out):
    g = root / "deploy" / "grafana"
    ds = load_yaml_docs(g / "provisioning" / "datasources" / "prometheus.yaml")[0]
    uids = {d["uid"] for d in ds["datasources"]}
    prov = load_yaml_docs(g / "provisioning" / "dashboards" / "telegate.yaml")[0]
    compose = load_yaml_docs(root / "deploy" / "compose.yaml")[0]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if v.startswith(".")}
    for p in prov["providers"]:
        if p["options"]["path"] not in mounts:
            problem(g / "provisioning/dashboards/telegate.yaml", f"{p['options']['path']} is not mounted in the grafana service")
    exprs = []
    for f in sorted((g / "dashboards").glob("*.json")):
        d = json.loads(f.read_text())
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in d:
                problem(f, f"no {key}")
        variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
        ds_vars = {"${%s}" % v["name"] for v in d["templating"]["list"] if v["type"] == "datasource"}
        ids, cells = set(), set()
        for p in d["panels"]:
            if p["id"] in ids:
                problem(f, f"panel id {p['id']} is used twice")
            ids.add(p["id"])
            gp = p["gridPos"]
            if gp["x"] + gp["w"] > 24:
                problem(f, f"panel {p['title']!r} is wider than the grid")
            for x in range(gp["x"], gp["x"] + gp["w"]):
                for y in range(gp["y"], gp["y"] + gp["h"]):
                    if (x, y) in cells:
                        problem(f, f"panel {p['title']!r} overlaps another")
                        break
                    cells.add((x, y))
            if p["type"] == "row":
                continue
            if not p.get("targets"):
                problem(f, f"panel {p['title']!r} has no query")
            for t in p.get("targets", []):
                uid = t.get("datasource", {}).get("uid")
                if uid not in uids and uid not in ds_vars:
                    problem(f, f"panel {p['title']!r}: data source {uid!r} is neither provisioned nor a variable")
                expr = t.get("expr", "")
                for var in re.findall(r"\$(\w+)|\$\{(\w+)\}", expr):
                    v = var[0] or var[1]
                    if not v.startswith("__") and v not in variables:
                        problem(f, f"panel {p['title']!r}: ${v} is no dashboard variable")
                exprs.append((f"{f.name}: {p['title']}", expr))
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
                if not m:
                    problem(f, f"variable {v['name']}: {q!r} is not label_values(metric, label)")
                else:
                    exprs.append((f"{f.name}: variable {v['name']}", m.group(1)))
    # As recording rules, so that promtool parses every query with Prometheus' own parser.
    rules = []
    for i, (where, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:query:{i}", "expr": e})
    rules_out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    print(f"  {len(exprs)} dashboard queries written to {rules_out} for promtool")
    return [e for _, e in exprs]


# ---------------------------------------------------------------- metric names

PROMQL_WORDS = {"sum", "rate", "increase", "by", "on", "without", "and", "or", "unless", "max", "min",
                "avg", "count", "histogram_quantile", "scalar", "vector", "time", "offset", "group_left",
                "group_right", "bool", "label_values", "humanize", "humanizePercentage", "humanizeDuration"}


def metric_names(exprs):
    names = set()
    for e in exprs:
        e = re.sub(r'"[^"]*"', '""', e)  # label values are not names
        for tok in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
            if tok.startswith("telegate_"):
                names.add(tok)
    return names


def check_metrics_documented(root, names, out):
    ops = (root / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(telegate_\w+)`", ops, re.M))
    for n in sorted(names):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n not in documented and base not in documented:
            problem("docs/operations.md", f"{n} is queried in deploy/ but not in the metrics table")
    out.write_text("".join(f"{n}\n" for n in sorted(names)))
    print(f"  {len(names)} metric names queried, each in docs/operations.md; list in {out}")


def main():
    root = Path(sys.argv[1]).resolve()
    binary = Path(sys.argv[2])
    work = Path(sys.argv[3])
    step = sys.argv[4] if len(sys.argv) > 4 else "all"
    if step in ("all", "compose"):
        check_compose(root)
    if step in ("all", "dockerfile"):
        check_dockerfile(root, binary)
    if step in ("all", "kubernetes"):
        check_kubernetes(root)
    if step in ("all", "grafana"):
        dash = check_grafana(root, work / "dashboard-rules.yml")
        alerts = [r["expr"] for g in load_yaml_docs(root / "deploy/prometheus/alerts.yml")[0]["groups"] for r in g["rules"]]
        check_metrics_documented(root, metric_names(dash + alerts), work / "metric-names.txt")
    if problems:
        print("\n".join(f"FAILED {p}" for p in problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Validates deploy/ offline: cfn-lint for the CloudFormation template (from PyPI), a YAML parse
# plus structural checks for compose and the DaemonSet (no schema registry is reachable), the
# Dockerfile's instructions, and `bash -n` (plus shellcheck when present) for the hook script.
# The example configs are checked by the Rust test tests/deploy_examples.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cfn-lint >/dev/null 2>&1 && cfn-lint --version >/dev/null 2>&1 || pip install -q cfn-lint
cfn-lint deploy/aws/cloudformation.yaml
echo "deploy/aws/cloudformation.yaml: cfn-lint clean"
# The fleet wiring cfn-lint cannot ask for: IMDSv2 only, a termination hook, and its invoker.
for want in "HttpTokens: required" "autoscaling:EC2_INSTANCE_TERMINATING" \
  "EC2 Instance-terminate Lifecycle Action" "reflow-agent-scale-in-hook" \
  "autoscaling:CompleteLifecycleAction" "autoscaling:RecordLifecycleActionHeartbeat"; do
  grep -qF "$want" deploy/aws/cloudformation.yaml || { echo "deploy check failed: the template lacks $want"; exit 1; }
done

python3 - <<'PY'
import json, re, sys, yaml

def need(cond, what):
    if not cond:
        sys.exit(f"deploy check failed: {what}")

compose = yaml.safe_load(open("deploy/compose.yaml"))
agent = compose["services"]["agent"]
need("/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"], "compose mounts the Docker socket")
need("/var/lib/reflow-agent:/var/lib/reflow-agent" in agent["volumes"], "compose keeps the state dir at the host path")
need(int(agent["stop_grace_period"].rstrip("s")) > 300, "compose stop_grace_period exceeds the drain grace")
need(agent["build"]["dockerfile"] == "deploy/Dockerfile", "compose builds deploy/Dockerfile")
print("deploy/compose.yaml: ok")

docs = {d["kind"]: d for d in yaml.safe_load_all(open("deploy/k8s/daemonset.yaml")) if d}
need({"Namespace", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget", "DaemonSet"} <= docs.keys(),
     f"the k8s file has a namespace, service account, role and binding, PDB and DaemonSet: {sorted(docs)}")
ds = docs["DaemonSet"]
need(ds["apiVersion"] == "apps/v1", "a DaemonSet")
labels = ds["spec"]["template"]["metadata"]["labels"]
spec = ds["spec"]["template"]["spec"]
need(ds["spec"]["selector"]["matchLabels"].items() <= labels.items(), "selector matches the pod labels")
need(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects the agents")
need(docs["PodDisruptionBudget"]["spec"].get("maxUnavailable") == 1, "the PDB evicts one agent at a time")
sa = docs["ServiceAccount"]
need(spec["serviceAccountName"] == sa["metadata"]["name"], "the pods run as the ServiceAccount")
need(sa.get("automountServiceAccountToken") is False and spec.get("automountServiceAccountToken") is False,
     "no API token is mounted (the agent calls no Kubernetes API)")
need(docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"], "the binding names the role")
need(spec["terminationGracePeriodSeconds"] > 300, "terminationGracePeriodSeconds exceeds the drain grace")
need(spec.get("hostPID") is True, "hostPID: the agent reads an exec's cgroup through its host pid")
c = spec["containers"][0]
need("kill -TERM 1" not in json.dumps(c.get("lifecycle", {})), "no preStop signals pid 1 (the node's init under hostPID)")
mounts = {m["name"]: m for m in c["volumeMounts"]}
vols = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
need(mounts.keys() <= vols.keys(), "every mount has a volume")
need(vols["state"] == mounts["state"]["mountPath"], "the state dir is at the host path")
need(vols["docker-sock"] == "/var/run/docker.sock", "the Docker socket is mounted")
need(vols["kmsg"] == "/dev/kmsg" and "SYSLOG" in c["securityContext"]["capabilities"]["add"], "/dev/kmsg with CAP_SYSLOG")
need(vols["cgroup"] == "/sys/fs/cgroup" == mounts["cgroup"]["mountPath"] and mounts["cgroup"].get("readOnly"),
     "the node's cgroups at /sys/fs/cgroup, read-only")
need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
print("deploy/k8s/daemonset.yaml: ok")

unit = open("systemd/reflow-agent.service").read()
need("ProtectHome=read-only" in unit, "the systemd unit lets root's ~/.docker/config.json be read (ProtectHome=read-only)")
need("/dev/kmsg:/dev/kmsg" in agent.get("devices", []) and "SYSLOG" in agent.get("cap_add", []), "compose maps /dev/kmsg with CAP_SYSLOG")
need(agent.get("pid") == "host" and "/sys/fs/cgroup:/sys/fs/cgroup:ro" in agent["volumes"], "compose gives the host pids and cgroups (OOM evidence)")
print("systemd/reflow-agent.service, deploy/compose.yaml: registry credentials and /dev/kmsg ok")

instr = [l.split()[0] for l in open("deploy/Dockerfile") if l.strip() and not l.startswith("#") and not l.startswith(" ")]
known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "STOPSIGNAL", "ENTRYPOINT", "CMD"}
need(set(instr) <= known, f"Dockerfile instructions: {set(instr) - known}")
need(instr[0] == "FROM" and instr.count("FROM") == 2, "a two-stage Dockerfile")
print("deploy/Dockerfile: ok")
PY

# Alert rules: valid, and each fires on the series it is for (scripts/dev-services.sh installs
# promtool). The dashboard's queries are checked against a live agent's /metrics by
# control_it::sqs_round_trip_and_poison_goes_to_the_dlq_with_a_reason.
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)
python3 -c 'import json,sys; d=json.load(open("deploy/grafana/reflow-agent.json")); assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])'
echo "deploy/grafana/reflow-agent.json: ok"

bash -n deploy/aws/scale-in-hook.sh
if command -v shellcheck >/dev/null 2>&1; then shellcheck deploy/aws/scale-in-hook.sh; fi
echo "deploy/aws/scale-in-hook.sh: ok"

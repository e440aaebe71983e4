#!/usr/bin/env bash
# Auto Scaling scale-in lifecycle hook, run on the instance being terminated (for example by an
# SSM Run Command that an EventBridge rule starts on "EC2 Instance-terminate Lifecycle Action").
# It drains the agent (systemctl stop sends SIGTERM: stop consuming, hand back unstarted commands,
# let running jobs finish within queue.drain_grace_secs), keeps the lifecycle action alive while
# it waits, then lets the termination continue.
#
#   scale-in-hook.sh ASG_NAME HOOK_NAME [INSTANCE_ID]
set -euo pipefail
asg=${1:?auto scaling group name}
hook=${2:?lifecycle hook name}
instance=${3:-$(curl -fsS -H "X-aws-ec2-metadata-token: $(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)" http://169.254.169.254/latest/meta-data/instance-id)}
heartbeat_every=${HEARTBEAT_SECS:-60}

echo "draining reflow-agent on $instance"
systemctl stop --no-block reflow-agent
while systemctl is-active --quiet reflow-agent || [ "$(systemctl show -p SubState --value reflow-agent)" = "stop-sigterm" ]; do
  aws autoscaling record-lifecycle-action-heartbeat \
    --auto-scaling-group-name "$asg" --lifecycle-hook-name "$hook" --instance-id "$instance"
  sleep "$heartbeat_every"
done
echo "drained; completing the lifecycle action"
aws autoscaling complete-lifecycle-action \
  --auto-scaling-group-name "$asg" --lifecycle-hook-name "$hook" --instance-id "$instance" \
  --lifecycle-action-result CONTINUE

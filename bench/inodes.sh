#!/usr/bin/env bash
# What a new file costs on the disk the agent's state is on, and how many a job makes: the CPU
# of creating N empty files in a fresh directory there, again after deleting them, and after
# deleting twice as many, beside the same on /dev/shm (tmpfs); then the files and directories
# the agent creates and removes per job on spool:// (strace over JOBS trivial jobs).
# Writes its section of bench/RESULTS.md.
#
#   bench/inodes.sh [N] [JOBS]     (default 3000 files, 10 jobs)
#
# ext4 without a journal checks, for each new inode, every free inode before it in its block
# group for a recent deletion (`recently_deleted` in fs/ext4/ialloc.c, deleted in the last 60
# s, or 360 s while the inode table block is dirty), so on such a disk a create costs more the
# more files were deleted near it lately: the agent's atomic writes (a temp file renamed over
# the old one) and per-job directories churn inodes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
JOBS=${2:-10}
IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
source bench/lib.sh
queue_bench_prepare

WORK=$(mktemp -d)
PIDS=()
# strace waits for the agent it runs: the agent is stopped first.
trap 'pkill -P "${PIDS[@]}" 2>/dev/null; kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK" /dev/shm/reflow-inodes.$$' EXIT

disk=$(create_cost "$WORK/churn" "$N")
shm=$(create_cost "/dev/shm/reflow-inodes.$$" "$N")
dev=$(df --output=source "$WORK" | tail -1)
fstype=$(df --output=fstype "$WORK" | tail -1)
journal="n/a"
if [ -r "/sys/fs/ext4/${dev##*/}/journal_task" ]; then
  [ "$(cat "/sys/fs/ext4/${dev##*/}/journal_task")" = "<none>" ] && journal="no" || journal="yes"
fi

# The agent's creations and removals per job on spool://.
agent_toml "$WORK/spool.toml" spool "spool://$WORK/spool"
strace -f -qq -o "$WORK/strace" -e trace=openat,mkdir,mkdirat,link,linkat,symlink,symlinkat,unlink,unlinkat,rmdir \
  "$AGENT" --log-format json serve --config "$WORK/spool.toml" 2>"$WORK/agent.log" &
PIDS+=($!)
sleep 2
"$BENCH" jobs "spool://$WORK/spool" 4 "$IMAGE" >/dev/null # warm up
sleep 1
: >"$WORK/strace"
"$BENCH" jobs "spool://$WORK/spool" "$JOBS" "$IMAGE" >/dev/null
sleep 1
ok() { grep -a -E "$1" "$WORK/strace" | grep -v -c -- '= -1' || true; }
creates=$(ok 'O_CREAT|mkdir(at)?\(|symlink(at)?\(')
links=$(ok '[^nm]link(at)?\(')
removes=$(ok 'unlink(at)?\(|rmdir\(')
per() { echo "scale=1; $1 / $JOBS" | bc -l; }

out=$(mktemp)
{
  echo "## What a new file costs here"
  echo
  echo "Reproduce: \`bench/inodes.sh $N $JOBS\`. Machine: $(nproc) cores, $(cpu_model); the state disk: $fstype on $dev, journal: $journal. Date: $(date -u +%Y-%m-%d). CPU per create of an empty file (os.open with O_CREAT, close), in microseconds; the agent's creations (files, directories, links) and removals over $JOBS trivial jobs on \`spool://\`, from strace."
  echo
  row "where" "fresh directory" "after $N deletions" "after $((2 * N)) deletions"
  echo "|---|---|---|---|"
  # shellcheck disable=SC2086 # three numbers
  row "the state disk ($fstype)" $disk
  # shellcheck disable=SC2086
  row "/dev/shm (tmpfs)" $shm
  echo
  echo "The agent per job: $(per "$creates") new inodes (atomic writes' temp files: the outbox's events, the journal's entries, the exec's manifests, the pool's state; the exec's directories and logs), $(per "$links") hard links (no new inode: outputs promoted into the repositories, and the events published into \`events/\` from the outbox) and $(per "$removes") unlinks within the run (a published event's outbox name, each atomic write's rename freeing the inode it replaces, and an alloc's directories when it is collected)."
  echo
  echo "On ext4 without a journal every new inode is checked against the recent deletions before it in its block group (\`recently_deleted\`), which a profile of the agent's process over 40 jobs put at about 45% of its CPU (\`find_get_block_common\` and \`recently_deleted\` under \`__ext4_new_inode\`). The containers' and dockerd's own files pay it too. The check is for ext4 without a journal only, and its cost follows the deletions near the new inode: a fresh 2 GiB ext4 on a loop device measured 20 to 40 us per create with this script, with a journal and without one (2026-12-04, stop 36), and this disk itself measured 23 to 30 us after 30 GB of old build trees were deleted and 900 to 950 us an hour of benchmarks later (stop 37). Before stop 37 this script counted neither \`mkdir\` nor \`unlink\` (its patterns wanted the \`at\` forms): stop 36's 23.1 creations per job were 32.1 new inodes, 3.1 links and 11.0 unlinks by the count above."
} >"$out"
cat "$out"
bash bench/update-results.sh inodes "$out"

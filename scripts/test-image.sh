#!/usr/bin/env bash
# Build the test images offline (no registry): a rootfs from Debian's busybox-static and bash-static,
# imported with `docker import`. Idempotent: an image that already exists is left alone unless
# REBUILD=1.
#
# Images:
#   reflow-agent-test/busybox:1   busybox applets in /bin, plus /bin/bash (the exec shell)
set -euo pipefail

IMAGE=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
log() { printf '[test-image] %s\n' "$*" >&2; }

if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already present"
  echo "$IMAGE"
  exit 0
fi

need_pkgs=()
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
[ -x /bin/bash-static ] || need_pkgs+=(bash-static)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { log "installing ${need_pkgs[*]} needs root"; exit 1; }
  log "apt-get install ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# busybox-static must really be static: the image has no libc.
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' && ldd /bin/busybox >/dev/null 2>&1; then
  log "/bin/busybox is dynamically linked; install busybox-static"
  exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,arg,return,proc,sys,dev,root}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
cp /bin/bash-static "$rootfs/bin/bash"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = bash ] && continue
  [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

log "importing $IMAGE"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  -m 'reflow-agent offline test image (busybox-static + bash-static)' - "$IMAGE" >/dev/null
docker run --rm --network none "$IMAGE" /bin/bash -e -l -o pipefail -c 'echo ok' | grep -qx ok \
  || { log "$IMAGE does not run bash"; exit 1; }
echo "$IMAGE"

#!/usr/bin/env bash
# An emulated ARM64 device: a Debian bookworm arm64 root (qemu-user + debootstrap) with numpy, onnxruntime
# and an OpenSSH server on 127.0.0.1. It proves that the device side works on aarch64; it is ~1000x slower
# than native, so never use it to measure speed.
#
#   scripts/arm_device.sh build   build the root once (~10 min), cached outside the checkout; a second build or
#                                 start waits for one under way
#   scripts/arm_device.sh start   build if needed, start sshd, print a ready device profile (YAML) on stdout
#   scripts/arm_device.sh stop    stop the instance's sshd
#
# Environment:
#   EDGE_SMSP_ARM_CACHE     where the root and the aarch64 wheels live (default ~/.cache/edge-smsp/arm64)
#   EDGE_SMSP_ARM_INSTANCE  name of one running device (default "default"); each has its own keys and port
#   EDGE_SMSP_ARM_PORT      sshd port (default: a free one)
#   EDGE_SMSP_ARM_CPU       emulated CPU (default cortex-a76, a Raspberry Pi 5 core)
#   EDGE_SMSP_ARM_MIRROR    Debian mirror for debootstrap (default http://deb.debian.org/debian)
# Needs root (debootstrap, chroot, mounts). Exit code 2 with one line on stderr when this machine can't.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

cache="${EDGE_SMSP_ARM_CACHE:-$HOME/.cache/edge-smsp/arm64}"
root="$cache/root"
wheels="$cache/wheels"
instance="${EDGE_SMSP_ARM_INSTANCE:-default}"
mirror="${EDGE_SMSP_ARM_MIRROR:-http://deb.debian.org/debian}"
cpu="${EDGE_SMSP_ARM_CPU:-cortex-a76}"
device_python=/opt/dev/bin/python
state_in_root="/srv/edge-smsp/$instance"   # as the device sees it
state="$root$state_in_root"                # as the host sees it
# The device's packages: Raspberry Pi OS bookworm's Python 3.11 and PyPI's aarch64 onnxruntime.
device_python_version=3.11
device_packages=(numpy onnxruntime)

die() { echo "arm_device: $*" >&2; exit 2; }
log() { echo "arm_device: $*" >&2; }

case "$instance" in *[!A-Za-z0-9_.-]* | "") die "EDGE_SMSP_ARM_INSTANCE must be letters, digits, '.', '_' or '-'" ;; esac

require_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts); run it with sudo"
}

ensure_host_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The kernel runs aarch64 binaries through qemu once binfmt_misc is mounted and qemu-aarch64 is registered.
ensure_binfmt() {
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?): aarch64 cannot be emulated here"
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
      || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register \
      || die "cannot register qemu-aarch64 with binfmt_misc: aarch64 cannot be emulated here"
  fi
}

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.1f", b - a }'; }

build() {
  require_root
  mkdir -p "$cache"
  # One build at a time: a `start` while CI builds in the background waits for that build, then uses it.
  exec 9>"$cache/.build.lock"
  flock 9
  if [ -e "$root/.edge-smsp-ready" ]; then
    exec 9>&-
    return 0
  fi
  ensure_host_tools
  ensure_binfmt
  local start
  start=$(seconds)
  # debootstrap into a scratch directory; only a finished root is renamed into place.
  local partial="$cache/root.partial"
  rm -rf "$partial"
  log "debootstrap bookworm arm64 into $partial (about 10 minutes)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,openssh-server \
    bookworm "$partial" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $cache/debootstrap.log"
  echo "debootstrap_s $(elapsed "$start")" >"$cache/build-times.txt"

  # pip inside the emulated root cannot verify TLS here: the host downloads the aarch64 wheels.
  local step
  step=$(seconds)
  rm -rf "$wheels" && mkdir -p "$wheels"
  python3 -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --python-version "$device_python_version" --implementation cp \
    -d "$wheels" "${device_packages[@]}" || die "pip download of the aarch64 wheels failed"
  echo "wheels_s $(elapsed "$step")" >>"$cache/build-times.txt"

  step=$(seconds)
  mkdir -p "$partial/opt/wheels"
  cp "$wheels"/*.whl "$partial/opt/wheels/"
  chroot "$partial" /usr/bin/python3 -m venv /opt/dev
  chroot "$partial" /opt/dev/bin/python -m pip install -q --no-index --find-links /opt/wheels \
    "${device_packages[@]}" || die "installing the wheels in the arm64 root failed"
  rm -rf "$partial/opt/wheels"
  echo "venv_s $(elapsed "$step")" >>"$cache/build-times.txt"
  echo "total_s $(elapsed "$start")" >>"$cache/build-times.txt"

  touch "$partial/.edge-smsp-ready"
  rm -rf "$root"
  mv "$partial" "$root"
  exec 9>&-
  log "built $root in $(elapsed "$start") s"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

instance_pid() {
  local pid
  pid=$(cat "$state/sshd.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_profile() {
  local port=$1
  # The Raspberry Pi 5 profile with this device's connection; its own name keeps its measurements apart.
  sed -e '/^connection:/,$d' \
    -e 's/^name: raspberry_pi_5$/name: raspberry_pi_5_emulated/' \
    -e 's/^description: \(.*\)$/description: \1 (emulated with qemu-user on this host)/' \
    "$here/device_profiles/raspberry_pi_5.yaml"
  cat <<EOF
connection:
  transport: ssh
  host: 127.0.0.1
  port: $port
  user: root
  key_file: $state/client_ed25519
  known_hosts: $state/known_hosts
  python: $device_python
  workdir: /root/edge-smsp-runtime
EOF
}

start() {
  build
  ensure_binfmt
  if pid=$(instance_pid); then
    log "instance '$instance' already runs (pid $pid)"
    cat "$state/profile.yaml"
    return 0
  fi
  mkdir -p "$state" "$root/run/sshd"
  chmod 700 "$state"
  rm -f "$state/ssh_host_ed25519_key" "$state/client_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C "edge-smsp-arm-$instance-host" -f "$state/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C "edge-smsp-arm-$instance-client" -f "$state/client_ed25519"
  cp "$state/client_ed25519.pub" "$state/authorized_keys"
  local port="${EDGE_SMSP_ARM_PORT:-$(free_port)}"
  cat >"$state/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $state_in_root/ssh_host_ed25519_key
PidFile $state_in_root/sshd.pid.inner
AuthorizedKeysFile $state_in_root/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv QEMU_CPU=$cpu
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel ERROR
EOF
  # A private mount namespace: /proc and /dev appear in the root only for this sshd and vanish with it.
  # Not /sys: onnxruntime's cpuinfo crashes under qemu when it can read it.
  QEMU_CPU="$cpu" setsid unshare --mount --propagation private sh -c '
      mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
      exec chroot "$1" /usr/sbin/sshd -D -e -f "$2/sshd_config"' sh "$root" "$state_in_root" \
    </dev/null >"$state/sshd.log" 2>&1 &
  echo $! >"$state/sshd.pid"
  local deadline=$((SECONDS + 120)) banner=""
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$(cat "$state/sshd.pid")" 2>/dev/null || die "sshd exited: $(tail -c 500 "$state/sshd.log")"
    banner=$(python3 -c 'import socket, sys
try:
    print(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).recv(8).decode())
except OSError:
    pass' "$port")
    case "$banner" in SSH-*) break ;; esac
    sleep 0.5
  done
  case "$banner" in SSH-*) ;; *) stop; die "sshd did not answer on 127.0.0.1:$port within 120 s" ;; esac
  echo "[127.0.0.1]:$port $(cut -d' ' -f1-2 "$state/ssh_host_ed25519_key.pub")" >"$state/known_hosts"
  write_profile "$port" >"$state/profile.yaml"
  log "instance '$instance' listens on 127.0.0.1:$port; profile: $state/profile.yaml"
  cat "$state/profile.yaml"
}

descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1"); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  local pid
  if pid=$(instance_pid); then
    # sshd puts each connection in a session of its own: stop the listener and everything below it.
    local all
    all="$pid $(descendants "$pid")"
    kill -TERM $all 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
    kill -KILL $all 2>/dev/null || true
    log "instance '$instance' stopped"
  fi
  rm -rf "$state"  # keys, config and profile of this run: the next start makes new ones
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) die "usage: scripts/arm_device.sh [build|start|stop]" ;;
esac

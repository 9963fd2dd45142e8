#!/usr/bin/env bash
# Two "hosts" on one Linux machine, for trying `mpiexec` / `convprop train --workers` across a network:
# two network namespaces joined by a veth pair (a cable with an address at each end), each with its own
# host name, an sshd on the second one with a key made for the run, a hostfile naming both, and the
# settings that make MPICH talk TCP over that link (no shared memory between the two).  Needs root.
#
#   sudo docs/two-hosts.sh up DIR            # build it; DIR (new or empty) keeps the key, hostfile, logs
#   sudo docs/two-hosts.sh run DIR CMD...    # run CMD on host1 with mpiexec set up for both hosts, e.g.
#        sudo docs/two-hosts.sh run DIR .venv/bin/convprop train --workers 2 --out /tmp/run
#        sudo docs/two-hosts.sh run DIR .venv/bin/mpiexec -n 2 .venv/bin/convprop train --out /tmp/run
#   sudo docs/two-hosts.sh link DIR down|up  # cut or mend the cable (a network partition)
#   sudo docs/two-hosts.sh down DIR          # kill every process on both hosts, remove all it made, DIR too
#
# What `run` sets, and what a real cluster needs instead (docs/distributed.md, "Two hosts"):
#   HYDRA_HOST_FILE=DIR/hosts          host1:1 and host2:1 (`mpiexec -f`): one rank on each
#   HYDRA_LAUNCHER=ssh, HYDRA_LAUNCHER_EXEC=DIR/ssh   ssh with this run's key (`-launcher-exec`)
#   HYDRA_IFACE=DEV                    the veth link carries Hydra's own traffic (`-iface`)
#   MPIR_CVAR_NOLOCAL=1                MPICH: no shared memory even between ranks of one machine
#   UCX_TLS=tcp, UCX_NET_DEVICES=DEV   MPICH's UCX network module: TCP over the veth link only
# Hydra passes the whole environment on to every rank (its default, -genvall), so the ranks on host2
# get the same PATH, PYTHONPATH and these settings.
set -euo pipefail

SUBNET=10.231.0  # host1 is .1, host2 .2: private addresses, inside the namespaces only

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2

state() {  # the names this run chose (written by `up`)
  [ -f "$dir/name" ] || { echo "two-hosts.sh: $dir: not set up (no $dir/name)" >&2; exit 1; }
  name=$(cat "$dir/name") ns1=$name-1 ns2=$name-2 dev=${name}v
}

on() {  # on HOST CMD...: run CMD in that host's namespace, under its host name
  local host=$1
  shift
  ip netns exec "$name-${host#host}" unshare --uts --ipc sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
}

case $cmd in
up)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/name" ] || { echo "two-hosts.sh: $dir is already set up" >&2; exit 1; }
  name=cp$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n') ns1=$name-1 ns2=$name-2 dev=${name}v
  echo "$name" >"$dir/name"
  ip netns add "$ns1"
  ip netns add "$ns2"
  # the cable: one veth pair, the same device name at both ends, each end in its own namespace
  ip link add "$dev" netns "$ns1" type veth peer name "$dev" netns "$ns2"
  for i in 1 2; do
    ip -n "$name-$i" addr add "$SUBNET.$i/24" dev "$dev"
    ip -n "$name-$i" link set lo up
    ip -n "$name-$i" link set "$dev" up
    # the host names, for processes in that namespace (`ip netns exec` mounts /etc/netns/NS/hosts on /etc/hosts)
    mkdir -p "/etc/netns/$name-$i"
    printf '127.0.0.1 localhost\n%s.1 host1\n%s.2 host2\n' "$SUBNET" "$SUBNET" >"/etc/netns/$name-$i/hosts"
  done
  # both ends up before anything uses the link (UCX refuses a device that is not running yet: "No such device")
  for _ in $(seq 100); do
    up=$(for i in 1 2; do ip netns exec "$name-$i" cat "/sys/class/net/$dev/operstate"; done | grep -c '^up$')
    [ "$up" -eq 2 ] && break
    sleep 0.1
  done
  ssh-keygen -q -t ed25519 -N '' -C "two-hosts $name" -f "$dir/key"
  ssh-keygen -q -t ed25519 -N '' -C "two-hosts $name host" -f "$dir/host_key"
  cp "$dir/key.pub" "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<EOF
ListenAddress $SUBNET.2
Port 22
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
ClientAliveInterval 2
ClientAliveCountMax 3
EOF
  cat >"$dir/ssh" <<EOF
#!/bin/sh
# ssh as Hydra calls it (ssh HOST CMD), with this run's key; the keepalive makes a lost host end the
# connection (and so the run) within ~6 s instead of TCP's ~15 minutes
exec ssh -i "$dir/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \\
  -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=2 -o ServerAliveCountMax=3 "\$@"
EOF
  chmod +x "$dir/ssh"
  printf 'host1:1\nhost2:1\n' >"$dir/hosts"
  mkdir -p /run/sshd  # (sshd's privilege-separation directory)
  on host2 /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"  # daemonizes once it listens
  for _ in $(seq 50); do
    on host1 "$dir/ssh" host2 true 2>/dev/null && break
    sleep 0.1
  done
  on host1 "$dir/ssh" host2 true
  echo "two hosts up: host1 ($SUBNET.1, namespace $ns1) and host2 ($SUBNET.2, namespace $ns2), link $dev"
  ;;
run)
  state
  [ $# -ge 1 ] || usage
  on host1 env HYDRA_HOST_FILE="$dir/hosts" HYDRA_LAUNCHER=ssh HYDRA_LAUNCHER_EXEC="$dir/ssh" HYDRA_IFACE="$dev" \
    MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp UCX_NET_DEVICES="$dev" "$@"
  ;;
link)
  state
  [ "${1:-}" = up ] || [ "${1:-}" = down ] || usage
  ip -n "$ns1" link set "$dev" "$1"
  ;;
down)
  [ -f "$dir/name" ] || exit 0
  state
  for i in 1 2; do
    if ip netns list | grep -qw "$name-$i"; then
      pids=$(ip netns pids "$name-$i")
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
  done
  for i in 1 2; do
    for _ in $(seq 50); do  # (a killed process leaves the namespace when it is reaped)
      [ -z "$(ip netns pids "$name-$i" 2>/dev/null)" ] && break
      sleep 0.1
    done
    ip netns del "$name-$i" 2>/dev/null || true
    rm -rf "/etc/netns/$name-$i"
  done
  rm -rf "$dir"
  ;;
*)
  usage
  ;;
esac

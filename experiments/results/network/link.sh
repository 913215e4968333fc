#!/bin/sh
# Shapes what nginx sends from ports 18090 and 18091 on loopback to 2 MiB/s and 20 MiB/s in the
# kernel (a token bucket, tc-tbf(8)), the way a slow link holds a download; other loopback
# traffic passes untouched. Needs root (CAP_NET_ADMIN).
#   sh experiments/results/network/link.sh up | down | show
set -e
case "$1" in
up)
  # traffic no filter below names passes unshaped (htb's default 0: straight out)
  tc qdisc add dev lo root handle 1: htb default 0
  # a class per port, each with a token bucket at its rate ("bps" is bytes per second) that
  # holds two 64 KiB loopback packets
  tc class add dev lo parent 1: classid 1:1 htb rate 10gbit
  tc class add dev lo parent 1: classid 1:2 htb rate 10gbit
  tc qdisc add dev lo parent 1:1 handle 10: tbf rate 2097152bps burst 131072 limit 1048576
  tc qdisc add dev lo parent 1:2 handle 20: tbf rate 20971520bps burst 131072 limit 4194304
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport 18090 0xffff flowid 1:1
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport 18091 0xffff flowid 1:2
  ;;
down) tc qdisc del dev lo root ;;
show) tc -s qdisc show dev lo ;;
*) echo "usage: sh $0 up | down | show" >&2; exit 2 ;;
esac

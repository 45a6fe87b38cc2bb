#!/bin/sh
# Forms oceanus's Redis Cluster once, and only once: safe to run again at any time.
# Used by the Job `redis-cluster-init` (k8s/overlays/redis-cluster) and by the compose
# service `redis-cluster-init` (docker/compose.yaml, profile `cluster`).
#
# Environment:
#   REDIS_CLUSTER_NODES     "host:port ..." of every node, masters and replicas (six here)
#   REDIS_CLUSTER_REPLICAS  replicas per master (1)
#   REDIS_CLUSTER_USER      the ACL user allowed CLUSTER MEET/ADDSLOTS/REPLICATE (oceanus-admin)
#   REDISCLI_AUTH           that user's password (redis-cli reads it from here, never from argv)
#   REDIS_CLUSTER_WAIT_S    how long to wait for the nodes, then for the cluster (300)
#
# 1. Wait until every node answers PING (its AOF replayed).
# 2. Every node alone (cluster_known_nodes:1): a fresh cluster, `redis-cli --cluster create`.
#    The nodes' names are resolved to addresses first: CLUSTER MEET takes an IP, not a name.
# 3. Otherwise the cluster was formed before. If every node already says cluster_state:ok
#    and is connected to every peer, there is nothing to do. If not, the likely cause is that the nodes came back with new IP
#    addresses (pods rescheduled together): nodes.conf keeps the peers' old addresses and the
#    cluster bus connects to IPs only, so each node is introduced again at its current address
#    (CLUSTER MEET of a known node updates its address; slots and roles are kept).
# 4. Wait until every node says cluster_state:ok, or fail.
set -eu

: "${REDISCLI_AUTH:?REDISCLI_AUTH: the password of REDIS_CLUSTER_USER}"
nodes=${REDIS_CLUSTER_NODES:?REDIS_CLUSTER_NODES: the nodes, as host:port separated by spaces}
replicas=${REDIS_CLUSTER_REPLICAS:-1}
user=${REDIS_CLUSTER_USER:-oceanus-admin}
deadline=$(($(date +%s) + ${REDIS_CLUSTER_WAIT_S:-300}))

say() { echo "redis-cluster-init: $*" >&2; }

cli() { # cli host:port ARGS...
	target=$1
	shift
	redis-cli --no-auth-warning --user "$user" -h "${target%:*}" -p "${target##*:}" "$@"
}

field() { # field host:port NAME: one line of CLUSTER INFO
	cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

in_time() {
	[ "$(date +%s)" -lt "$deadline" ] || {
		say "$1"
		exit 1
	}
	sleep 2
}

addresses=""
buses=""
for node in $nodes; do
	until [ "$(cli "$node" ping 2>/dev/null)" = PONG ]; do
		in_time "$node does not answer PING"
	done
	host=${node%:*}
	ip=$(getent hosts "$host" | awk '{ print $1; exit }')
	addresses="$addresses ${ip:-$host}:${node##*:}"
	# The cluster bus port, for CLUSTER MEET: cluster-port, or the port + 10000 when 0.
	bus=$(cli "$node" config get cluster-port | tr -d '\r' | sed -n 2p)
	[ "${bus:-0}" != 0 ] || bus=$((${node##*:} + 10000))
	buses="$buses $bus"
done

linked() { # linked host:port: the node knows no failed peer and is connected to every one
	cli "$1" cluster nodes 2>/dev/null | tr -d '\r' |
		awk '$3 ~ /fail|noaddr/ || $8 != "connected" { bad = 1 } END { exit bad }'
}

alone=yes
healthy=yes
for node in $nodes; do
	[ "$(field "$node" cluster_known_nodes)" = 1 ] || alone=no
	# cluster_state:ok alone may be stale just after a restart: the links tell at once.
	{ [ "$(field "$node" cluster_state)" = ok ] && linked "$node"; } || healthy=no
done

if [ "$alone" = yes ]; then
	say "forming a cluster of$addresses with $replicas replica(s) per master"
	# shellcheck disable=SC2086 # one argument per address
	redis-cli --no-auth-warning --user "$user" --cluster create $addresses \
		--cluster-replicas "$replicas" --cluster-yes
elif [ "$healthy" = yes ]; then
	say "already formed, every node says cluster_state:ok: nothing to do"
	exit 0
else
	say "formed before but not ok: introducing every node again at its current address"
	# shellcheck disable=SC2086 # one bus port per node, in the order of the addresses
	set -- $buses
	first=""
	for address in $addresses; do
		if [ -z "$first" ]; then
			first=$address
		else
			cli "$first" cluster meet "${address%:*}" "${address##*:}" "$1" >/dev/null
		fi
		shift
	done
fi

for node in $nodes; do
	until [ "$(field "$node" cluster_state)" = ok ]; do
		in_time "$node does not reach cluster_state:ok"
	done
done
say "cluster_state:ok on every node"

#!/usr/bin/env bash
# Makes sure the services the tests need are running: MariaDB on
# 127.0.0.1:3306 (root, no password), Redis on 127.0.0.1:6379, and that the
# tools they run are installed: Chromium, nginx, promtool, systemd-analyze,
# podman with runc, Node.js with npm. Installs the Debian packages when
# missing. Sourced by scripts/test.sh and scripts/bench.sh.

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		echo "need root for: $*" >&2
		return 1
	fi
}

apt_updated=
apt_install() {
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq
		apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ensure_commands COMMAND:PACKAGE... installs, in one apt-get, the Debian
# package of each command that is on neither the PATH nor /usr/sbin.
ensure_commands() {
	local missing=() pair
	for pair in "$@"; do
		if ! command -v "${pair%%:*}" >/dev/null && [ ! -x "/usr/sbin/${pair%%:*}" ]; then
			missing+=("${pair#*:}")
		fi
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing ${missing[*]}" >&2
		apt_install --no-install-recommends "${missing[@]}"
	fi
}

# The tools of the deployment checks: nginx in front of the server,
# promtool for the alert rules, systemd-analyze for the unit, podman (with
# runc: crun refuses hosts with hybrid cgroups) for the image, Node.js and
# npm for the client library.
ensure_tools() {
	ensure_commands nginx:nginx promtool:prometheus systemd-analyze:systemd \
		podman:podman runc:runc node:nodejs npm:npm
}

# wait_until CMD... : retry for up to 30 s.
wait_until() {
	for _ in $(seq 1 150); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}

mariadb_up() { mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping; }

ensure_mariadb() {
	if command -v mariadb-admin >/dev/null && mariadb_up >/dev/null 2>&1; then return 0; fi
	if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
		echo "installing mariadb-server" >&2
		apt_install mariadb-server mariadb-client
	fi
	echo "starting MariaDB" >&2
	as_root mkdir -p /run/mysqld
	as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
	as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
	if ! wait_until mariadb_up; then
		echo "MariaDB did not start on 127.0.0.1:3306" >&2
		return 1
	fi
	# A fresh install lets root in through the socket only.
	as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket" 2>/dev/null || true
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }

ensure_redis() {
	if command -v redis-cli >/dev/null && redis_up 2>/dev/null; then return 0; fi
	if ! command -v redis-server >/dev/null; then
		echo "installing redis-server" >&2
		apt_install redis-server
	fi
	echo "starting Redis" >&2
	as_root mkdir -p /var/lib/redis /var/log/redis
	as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/test.log
	if ! wait_until redis_up; then
		echo "Redis did not start on 127.0.0.1:6379" >&2
		return 1
	fi
}

ensure_chromium() {
	if command -v chromium >/dev/null; then return 0; fi
	echo "installing chromium" >&2
	apt_install chromium
}

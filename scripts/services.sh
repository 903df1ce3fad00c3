#!/usr/bin/env bash
# Start the services the test suite talks to, when they are not already up.
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 1883; then
  if command -v mosquitto >/dev/null 2>&1; then
    echo "starting mosquitto"; mosquitto -d -c /etc/mosquitto/mosquitto.conf || mosquitto -d -p 1883
  else
    echo "warning: mosquitto is not installed; MQTT tests need it (apt-get install mosquitto)"
  fi
fi
if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting postgresql"; pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  else
    echo "warning: PostgreSQL is not running; PostgreSQL variants of the tests will fail"
  fi
fi
for i in $(seq 1 30); do port_open 1883 && port_open 5432 && exit 0; sleep 1; done
echo "warning: services not all reachable after 30 s"

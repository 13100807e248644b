#!/bin/sh
# The official image's start, reduced to what compose relies on: the default user from the environment, the
# broker in the foreground as the rabbitmq user.
set -eu
conf=/etc/rabbitmq/conf.d/10-defaults.conf
mkdir -p /etc/rabbitmq/conf.d
{
    echo "loopback_users = none"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = $RABBITMQ_DEFAULT_USER"; fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = $RABBITMQ_DEFAULT_PASS"; fi
} > "$conf"
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq
exec runuser -u rabbitmq -- "$@"

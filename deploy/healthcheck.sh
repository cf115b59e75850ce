#!/bin/bash
# Container health check for the image (Dockerfile HEALTHCHECK): GET /healthz on Herald's
# own listener and succeed on HTTP 200. The slim image has no curl; bash's /dev/tcp does it.
# The port is taken from HERALD_LISTEN (default 0.0.0.0:8080); the request goes to
# 127.0.0.1, so a HERALD_LISTEN bound to one non-loopback address is not supported here.
listen="${HERALD_LISTEN:-0.0.0.0:8080}"
port="${listen##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 || exit 1
read -r -t 2 _ status _ <&3 || exit 1
[ "$status" = 200 ]

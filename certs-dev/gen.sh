#!/usr/bin/env bash
# DEVELOPMENT ONLY: regenerates the self-signed certificates in this folder.
# They protect nothing: the private keys are public in this repository.
set -euo pipefail
cd "$(dirname "$0")"
# Default cert: localhost, 127.0.0.1, ::1 (P-256, 10 years).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -keyout key.pem -out cert.pem -subj "/CN=weir development certificate (DO NOT TRUST)" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth"
# A second cert, for SNI tests: alt.weir.test and *.alt.weir.test.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -keyout alt-key.pem -out alt-cert.pem -subj "/CN=weir alt development certificate (DO NOT TRUST)" \
  -addext "subjectAltName=DNS:alt.weir.test,DNS:*.alt.weir.test" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth"

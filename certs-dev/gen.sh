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
# Client certificates (mutual TLS tests): a CA for clients, a client it signed, and a client
# signed by another CA that weir does not trust.
client_cert() { # name ca subject
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1-key.pem" -out "$1.csr" -subj "$3"
  openssl x509 -req -in "$1.csr" -CA "$2-ca.pem" -CAkey "$2-ca-key.pem" -CAcreateserial \
    -days 3650 -out "$1-cert.pem" \
    -extfile <(printf "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature")
  rm -f "$1.csr" "$2-ca.srl"
}
for ca in client stranger; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "$ca-ca-key.pem" -out "$ca-ca.pem" -subj "/CN=weir $ca CA (DO NOT TRUST)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
done
client_cert client client "/O=weir dev/OU=ops\, staff/CN=client one"
client_cert stranger stranger "/CN=stranger"

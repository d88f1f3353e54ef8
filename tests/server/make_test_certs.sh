#!/bin/sh
# Throwaway certificates for the TLS tests, written into DIR (Debian's openssl, P-256 keys, valid
# one day):
#   ca.pem ca.key            the test CA
#   server.pem server.key    signed by it, for 127.0.0.1 and localhost (subjectAltName)
#   client.pem client.key    signed by it, for mutual TLS (extendedKeyUsage clientAuth)
#   other_ca.pem other_ca.key  an unrelated CA (a client trusting it must be refused)
# Usage: make_test_certs.sh DIR
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 1 -subj "/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() {  # name subject extensions
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca rcknn-test-ca
ca other_ca rcknn-other-ca
leaf server localhost "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
leaf client rcknn-test-client "extendedKeyUsage=clientAuth"

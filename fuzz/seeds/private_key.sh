#!/usr/bin/env bash
# Writes the seed inputs of the `private_key` fuzz target into OUT_DIR, from keys made
# fresh by openssl each time (no private key is committed to the repository). The first
# byte tells the target how to read the rest (fuzz_targets/private_key.rs): 0 PEM text,
# 1 PKCS#1 DER, 3 PKCS#8 DER, 5 SEC1 DER.
set -euo pipefail
out="${1:?usage: private_key.sh OUT_DIR}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
umask 077
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl rsa -in "$work/rsa.pem" -traditional -out "$work/rsa.pkcs1.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ec.sec1.pem"
seed() { { printf "\\$(printf '%03o' "$1")"; cat; } >"$out/$2"; }
seed 0 rsa_pkcs8_pem <"$work/rsa.pem"
seed 0 rsa_pkcs1_pem <"$work/rsa.pkcs1.pem"
seed 0 ec_sec1_pem <"$work/ec.sec1.pem"
openssl rsa -in "$work/rsa.pem" -traditional -outform DER 2>/dev/null | seed 1 rsa_pkcs1_der
openssl pkcs8 -topk8 -nocrypt -in "$work/rsa.pem" -outform DER | seed 3 rsa_pkcs8_der
openssl ec -in "$work/ec.sec1.pem" -outform DER 2>/dev/null | seed 5 ec_sec1_der
openssl pkcs8 -topk8 -nocrypt -in "$work/ec.sec1.pem" -outform DER | seed 3 ec_pkcs8_der

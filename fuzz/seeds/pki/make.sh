#!/usr/bin/env bash
# Regenerates the fixed PKI and the seed inputs of the fuzz targets (run from anywhere).
# The certificates are valid for 20 years from the day they were made; the server_reply
# target checks them at 2030-01-01, so regenerate before then only if that date changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seeds=$(dirname "$here")
cd "$here"
openssl req -x509 -newkey rsa:2048 -nodes -keyout rootCA.key -out rootCA.pem -days 7300 \
    -subj "/CN=keyward fuzz root" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=server" 2>/dev/null
printf 'subjectAltName=DNS:server\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' > ext.cnf
openssl x509 -req -in server.csr -CA rootCA.pem -CAkey rootCA.key -CAcreateserial -days 7300 \
    -extfile ext.cnf -out server.pem 2>/dev/null
printf 'server0f8fad5b-d9cb-469f-a165-70867728950e' > signed.txt
openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-2 -sign server.key -out server.sig signed.txt
openssl x509 -in server.pem -outform DER -out server.der

mkdir -p "$seeds"/{server_reply,certificate,frame_request}
# (the private_key seeds are made at run time: ../private_key.sh)
# server_reply: mode, 2-byte length, certificate, signature.
python3 - "$seeds" <<'PY'
import struct, sys
seeds = sys.argv[1]
pki = seeds + "/pki/"
pem = open(pki + "server.pem", "rb").read()
der = open(pki + "server.der", "rb").read()
sig = open(pki + "server.sig", "rb").read()
open(seeds + "/server_reply/pem", "wb").write(b"\0" + struct.pack(">H", len(pem)) + pem + sig)
open(seeds + "/server_reply/der", "wb").write(b"\1" + struct.pack(">H", len(der)) + der + sig)
open(seeds + "/certificate/server_pem", "wb").write(b"\0" + pem)
open(seeds + "/certificate/server_der", "wb").write(b"\1" + der)
open(seeds + "/certificate/root_pem", "wb").write(b"\0" + open(pki + "rootCA.pem", "rb").read())
open(seeds + "/certificate/chain_pem", "wb").write(b"\0" + pem + open(pki + "rootCA.pem", "rb").read())
def frame(body):
    return struct.pack(">I", len(body)) + body
reqs = [
    b'{"v":1,"id":1,"op":"hello"}',
    b'{"v":1,"id":2,"op":"status"}',
    b'{"v":1,"id":3,"op":"list_keys"}',
    b'{"v":1,"id":4,"op":"public_key","key":"site-1"}',
    b'{"v":1,"id":5,"op":"sign","key":"site-1","profile":"nvflare","data":"c2l0ZS0x"}',
    b'{"v":1,"id":6,"op":"sign","key":"site-1","profile":"tls-rsa-pss-sha256","data":"aGk="}',
    b'{"v":1,"id":7,"op":"decrypt","key":"site-1","data":"AAECAwQ="}',
    b'{"v":1,"id":8,"op":"nvflare_challenge","key":"site-1"}',
    b'{"v":1,"id":9,"op":"nvflare_register","key":"site-1","client_nonce":"0f8fad5b-d9cb-469f-a165-70867728950e","server_cert":"LS0t","server_cn":"server","server_signature":"AAAA","server_nonce":"abc"}',
    b'{"v":1,"id":10,"op":"nvflare_verify_token","session":"s","client_name":"site-1","token":"t","token_signature":"AAAA"}',
]
for i, r in enumerate(reqs):
    open(seeds + "/frame_request/req%02d" % i, "wb").write(r)
open(seeds + "/frame_request/stream", "wb").write(b"".join(frame(r) for r in reqs))
PY
rm -f rootCA.key rootCA.srl server.csr ext.cnf signed.txt server.der server.sig server.pem server.key

#!/usr/bin/env python3
"""Serves a directory over HTTPS on 127.0.0.1, as an identity provider serves its JWKS, with a
CA of its own made by the `openssl` command line: writes DIR/ca.pem (the CA to trust), prints
the port on the first line of stdout, then serves until killed (or its stdin closes).

Usage: serve_jwks.py DIR
"""

import http.server
import os
import ssl
import subprocess
import sys
import threading


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def main():
    root = sys.argv[1]
    tls = os.path.join(root, ".tls")
    os.makedirs(tls, exist_ok=True)
    ca_key, ca, key, csr, cert = (os.path.join(tls, n) for n in ["ca.key", "ca.pem", "server.key", "server.csr", "server.pem"])
    ext = os.path.join(tls, "ext.cnf")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
            "-subj", "/CN=identity test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as file:
        file.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "1", "-extfile", ext)
    with open(ca) as source, open(os.path.join(root, "ca.pem"), "w") as target:
        target.write(source.read())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=root, **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Ends when the test closes stdin (or dies).
    sys.stdin.read()


if __name__ == "__main__":
    main()

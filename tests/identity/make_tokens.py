#!/usr/bin/env python3
"""Makes the identity tests' keys, JWKS and tokens the way identity providers make them, with
tools other than pg-autouser's: the keys with the `openssl` command line (RSA 2048, EC P-256,
Ed25519), the JWKS documents and the tokens with PyJWT (and `cryptography`).

Usage: make_tokens.py DIR SPEC_JSON
  SPEC_JSON: {"user": "alice", "roles": ["devs"], "teleport_issuer": "...", "oidc_issuer": "...",
              "audience": "..."}
Writes into DIR:
  - rsa.pem, ec.pem, ed.pem, other.pem (private keys, openssl), rotated.pem;
  - jwks.json: the public keys of rsa, ec and ed (kids rsa-1, ec-1, ed-1);
  - jwks_rotated.json: those and the `other` key as kid rotated-2; jwks_rotated_only.json: that one;
  - tokens.json: {name: token}, the valid tokens and each refused case.
A missing tool is an error (exit 1), never a skip.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def openssl_key(path, algorithm, *options):
    """A private key made by the openssl command line, as an operator makes one."""
    command = ["openssl", "genpkey", "-algorithm", algorithm, *options, "-out", path]
    subprocess.run(command, check=True, capture_output=True)
    with open(path, "rb") as file:
        return serialization.load_pem_private_key(file.read(), password=None)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    out, spec = sys.argv[1], json.loads(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    keys = {
        "rsa": openssl_key(f"{out}/rsa.pem", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
        "ec": openssl_key(f"{out}/ec.pem", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
        "ed": openssl_key(f"{out}/ed.pem", "ED25519"),
        # A key no JWKS lists: the unknown kid, and the unconfigured issuer's key.
        "other": openssl_key(f"{out}/other.pem", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    }
    to_jwk = {"rsa": RSAAlgorithm.to_jwk, "ec": ECAlgorithm.to_jwk, "ed": OKPAlgorithm.to_jwk}
    alg_of = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA", "other": "RS256"}
    jwks = {"keys": []}
    for name in ["rsa", "ec", "ed"]:
        jwk = to_jwk[name](keys[name].public_key(), as_dict=True)
        jwk.pop("key_ops", None)
        jwk.update({"kid": f"{name}-1", "use": "sig", "alg": alg_of[name]})
        jwks["keys"].append(jwk)
    with open(f"{out}/jwks.json", "w") as file:
        json.dump(jwks, file, indent=2)
    # Key rotation: the issuer adds a key (kid rotated-2, the `other` key), then drops the old ones.
    rotated = to_jwk["rsa"](keys["other"].public_key(), as_dict=True)
    rotated.pop("key_ops", None)
    rotated.update({"kid": "rotated-2", "use": "sig", "alg": "RS256"})
    with open(f"{out}/jwks_rotated.json", "w") as file:
        json.dump({"keys": jwks["keys"] + [rotated]}, file, indent=2)
    with open(f"{out}/jwks_rotated_only.json", "w") as file:
        json.dump({"keys": [rotated]}, file, indent=2)

    now = int(time.time())
    user, roles, audience = spec["user"], spec["roles"], spec["audience"]
    teleport, oidc = spec["teleport_issuer"], spec["oidc_issuer"]

    def teleport_claims(**changes):
        # As Teleport signs them for application access: username, roles, traits.
        claims = {"iss": teleport, "aud": [audience], "sub": user, "username": user, "roles": roles,
                  "traits": {"logins": [user], "db_roles": None}, "nbf": now - 5, "iat": now - 5,
                  "exp": now + 600, "jti": f"teleport-{user}"}
        claims.update(changes)
        return claims

    def oidc_claims(**changes):
        # A standard OIDC ID token: sub, groups.
        claims = {"iss": oidc, "aud": audience, "sub": user, "email": f"{user}@example.com",
                  "groups": roles, "iat": now - 5, "exp": now + 600, "nonce": "n-1", "jti": f"oidc-{user}"}
        claims.update(changes)
        return claims

    def sign(claims, key="rsa", kid=None):
        return jwt.encode(claims, keys[key], algorithm=alg_of[key], headers={"kid": kid or f"{key}-1"})

    tokens = {}
    for key in ["rsa", "ec", "ed"]:
        tokens[f"teleport_{alg_of[key]}"] = sign(teleport_claims(jti=f"teleport-{key}"), key)
        tokens[f"oidc_{alg_of[key]}"] = sign(oidc_claims(jti=f"oidc-{key}"), key)
    tokens["expired"] = sign(teleport_claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600))
    tokens["not_yet_valid"] = sign(teleport_claims(nbf=now + 3600, exp=now + 7200))
    tokens["wrong_iss"] = sign(teleport_claims(iss="https://elsewhere.example.com"))
    tokens["wrong_aud"] = sign(teleport_claims(aud=["another-service"]))
    tokens["unknown_kid"] = sign(teleport_claims(), "other", kid="rotated-2")
    tokens["unknown_issuer"] = sign(teleport_claims(iss="unconfigured.example.com"), "other", kid="other-1")
    tokens["other_user"] = sign(teleport_claims(username=f"{user}_other", sub=f"{user}_other"))

    valid = tokens["teleport_RS256"]
    header, payload, signature = valid.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["roles"] = roles + ["admins"]
    tokens["tampered_payload"] = ".".join([header, b64(json.dumps(forged).encode()), signature])
    flipped = ("A" if signature[10] != "A" else "B")
    tokens["tampered_signature"] = ".".join([header, payload, signature[:10] + flipped + signature[11:]])

    none_header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    tokens["alg_none"] = ".".join([none_header, payload, ""])

    # The key confusion attack: HS256 with the issuer's public key (as published) as the secret.
    # PyJWT refuses to do this itself, so the MAC is computed as an attacker would.
    public_pem = keys["rsa"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    signing_input = f"{hs_header}.{payload}".encode()
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    tokens["hs256_public_key"] = f"{hs_header}.{payload}.{b64(mac)}"

    with open(f"{out}/tokens.json", "w") as file:
        json.dump(tokens, file, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates golden RDS IAM auth tokens with boto3, for the Rust token generator to reproduce.

Fixed credentials and a fixed clock; several regions, ports, users needing URL encoding, with
and without a session token. Run from the repository root:

    .deps/venv/bin/python tests/gen_rds_auth_token_vectors.py > tests/vectors/rds_auth_tokens.json
"""
import datetime
import json
from unittest import mock

import boto3
import botocore
import botocore.auth

# 2024-08-26T22:00:00Z
FIXED_TIME = datetime.datetime(2024, 8, 26, 22, 0, 0, tzinfo=datetime.timezone.utc)
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEPr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token/with=special&chars"

CASES = [
    ("orders.abc123.us-east-1.rds.amazonaws.com", 5432, "us-east-1", "teleport-admin"),
    ("orders.abc123.eu-west-1.rds.amazonaws.com", 5432, "eu-west-1", "teleport-admin"),
    ("cluster-x.cluster-abc.ap-southeast-2.rds.amazonaws.com", 6543, "ap-southeast-2", "teleport-admin"),
    ("db.example.internal", 15432, "us-gov-west-1", "a+b"),
    ("db.example.internal", 5432, "us-east-1", "ü"),
    ("db.example.internal", 5432, "us-east-1", "a b"),
    ("127.0.0.1", 54321, "us-east-1", "teleport-admin"),
]


def generate(host, port, region, user, session_token):
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=session_token,
        region_name=region,
    )
    client = session.client("rds", region_name=region)
    with mock.patch.object(botocore.auth.datetime, "datetime", wraps=datetime.datetime) as clock:
        clock.utcnow.return_value = FIXED_TIME.replace(tzinfo=None)
        clock.now.return_value = FIXED_TIME
        return client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region)


def main():
    vectors = []
    for host, port, region, user in CASES:
        for session_token in (None, SESSION_TOKEN):
            vectors.append(
                {
                    "host": host,
                    "port": port,
                    "region": region,
                    "user": user,
                    "session_token": session_token,
                    "token": generate(host, port, region, user, session_token),
                }
            )
    print(
        json.dumps(
            {
                "generator": f"boto3 {boto3.__version__} / botocore {botocore.__version__}",
                "time": FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "vectors": vectors,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()

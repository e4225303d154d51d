"""A real S3 endpoint for tests: moto's threaded server on 127.0.0.1.

Tests reach it through the fixtures of ``tests/conftest.py``: ``moto_endpoint`` (one server for
the session), ``s3_endpoint`` (an empty server, boto3 pointed at it through ``AWS_ENDPOINT_URL``
with fake credentials, so no real AWS account can ever be touched) and ``fake_aws`` (the fake
credentials, to check they never leak, and the functions below for module-scoped set-ups).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

FAKE_ACCESS_KEY = "AKIAPREDICTDTESTKEY0"
FAKE_SECRET_KEY = "predictd-test-secret-do-not-print"


def start_moto_server() -> tuple[str, Callable[[], None]]:
    """Start a moto S3 server on a free port of 127.0.0.1.

    Returns
    -------
    (str, callable)
        The endpoint URL (``http://127.0.0.1:PORT``) and a function that stops the server.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def start_authenticating_moto_server(bucket: str) -> tuple[str, dict, Callable[[], None]]:
    """A moto server (its own process) that checks signatures as AWS does: one IAM user
    allowed everything on ``bucket`` only, and ``bucket`` made. Returns the endpoint, the
    user's ``{"key": …, "secret": …}`` and a function that stops the server.

    Authentication starts after the set-up's four requests (moto's
    ``INITIAL_NO_AUTH_ACTION_COUNT``); from then on an unknown key or a wrong secret is refused
    with AWS's codes (a bare 403 to a HEAD)."""
    import json
    import sys

    import boto3

    from tests.support.servers import launch, listening

    port, _, stop = launch(
        "moto-server", lambda port, _: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                        "-p", str(port)],
        listening, timeout=30, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    endpoint = f"http://127.0.0.1:{port}"
    anon = dict(endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY)
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="predictd-test")                                       # 1
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    iam.put_user_policy(UserName="predictd-test", PolicyName="one-bucket",
                        PolicyDocument=json.dumps(policy))                          # 2
    key = iam.create_access_key(UserName="predictd-test")["AccessKey"]              # 3
    boto3.client("s3", **anon).create_bucket(Bucket=bucket)                        # 4
    return endpoint, {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}, stop


def reset_moto_server(endpoint: str) -> None:
    """Forget every bucket and object on the server."""
    import requests

    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()


def use_fake_aws(monkeypatch, endpoint: str) -> None:
    """Point boto3 at ``endpoint`` with fake credentials, ignoring any real AWS configuration."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/predictd-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/predictd-test-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


#: What the ``fake_aws`` fixture gives a test: the credentials and how to use them.
FAKE_AWS = SimpleNamespace(access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY,
                           reset_server=reset_moto_server, use=use_fake_aws)

"""The S3 server the suite runs: signed requests with real credentials, conditional writes, restarts."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from helpers.s3server import ACCESS_KEY, SECRET_KEY, running


def client(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def test_credentials_are_enforced_and_data_survives_a_restart(tmp_path) -> None:
    with running(tmp_path) as s3:
        s3_client = client(s3.endpoint)
        s3_client.create_bucket(Bucket="staging")
        s3_client.put_object(Bucket="staging", Key="runs/a/progress.json", Body=b'{"step": 3}')
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            client(s3.endpoint, key="intruder").list_objects_v2(Bucket="staging")
        with pytest.raises(ClientError, match="PreconditionFailed"):
            s3_client.put_object(Bucket="staging", Key="runs/a/progress.json", Body=b"{}", IfNoneMatch="*")

        s3.stop()
        with pytest.raises(EndpointConnectionError):
            client(s3.endpoint).list_objects_v2(Bucket="staging")
        s3.start()
        body = client(s3.endpoint).get_object(Bucket="staging", Key="runs/a/progress.json")["Body"].read()
        assert body == b'{"step": 3}'

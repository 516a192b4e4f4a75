#!/usr/bin/env bash
# An S3 stand-in for tests: moto's server on a loopback port, checking SigV4 signatures
# against its own IAM as real S3 does, with one bucket and one access key allowed s3:*.
# Usage: scripts/s3-fake.sh [PORT]     start (PORT: a free one when not given)
#        scripts/s3-fake.sh stop       stop the one started here
#
# Starting prints shell lines on stdout, for `eval "$(scripts/s3-fake.sh)"` or
# `set -a; . target/s3-fake/env; set +a`:
#   S3_ENDPOINT=http://127.0.0.1:PORT S3_REGION=us-east-1 S3_BUCKET=... S3_ACCESS_KEY_ID=...
#   S3_SECRET_ACCESS_KEY=... S3_PID=...
# Everything else goes to stderr. The server stays up in the background (its pid in
# $S3_FAKE_DIR/pid, its log in $S3_FAKE_DIR/log; S3_FAKE_DIR defaults to target/s3-fake) until
# `scripts/s3-fake.sh stop`; starting again stops the previous one first. S3_FAKE_BUCKET
# names the bucket (default xinge-test).
#
# How moto is made to check: with INITIAL_NO_AUTH_ACTION_COUNT=N its first N requests pass
# unchecked and every later one must be signed by an access key of its IAM, with a policy
# allowing the action. The N unchecked requests are spent here on the setup (an IAM user,
# its s3:* policy, its access key, the bucket); then the setup is verified: unsigned and
# wrongly signed requests are refused, signed ones work, multipart uploads complete, and a
# PUT with If-None-Match: * on an existing key gets 412. What this moto does not check that
# S3 does is printed as notes.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${S3_FAKE_DIR:-$PWD/target/s3-fake}"
venv="$PWD/target/contract-venv"
region=us-east-1
bucket="${S3_FAKE_BUCKET:-xinge-test}"
# The setup's requests: CreateUser, PutUserPolicy, CreateAccessKey, CreateBucket.
setup_requests=4

# Stops the server whose pid this script wrote, and only if that pid is still moto's (a
# pid left from an earlier boot may belong to something else by now).
stop() {
    [ -f "$dir/pid" ] || return 0
    local pid
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'moto\.server'; then
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "== s3-fake: stopped (pid $pid)" >&2
    fi
    rm -f "$dir/pid" "$dir/env"
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

# Its own output would end up in the caller's `eval`.
bash scripts/python-deps.sh >&2
mkdir -p "$dir"
stop

port="${1:-}"
if [ -z "$port" ]; then
    port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
endpoint="http://127.0.0.1:$port"
# Taken ports are refused here: moto would exit, but only after the readiness check below
# may have connected to whatever holds the port. SO_REUSEADDR as the server sets it.
if ! "$venv/bin/python" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
    echo "!! s3-fake: port $port on 127.0.0.1 is taken (or not a port)" >&2
    exit 1
fi

# stdin, stdout and stderr away from ours: the caller's $(...) ends when our stdout closes,
# not when the server does.
INITIAL_NO_AUTH_ACTION_COUNT=$setup_requests nohup "$venv/bin/python" -m moto.server \
    -H 127.0.0.1 -p "$port" </dev/null >"$dir/log" 2>&1 &
pid=$!
echo "$pid" >"$dir/pid"
# Ready once the port accepts connections: a TCP connect, not a request, so none of the
# unchecked requests is spent on waiting.
ready=""
for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$dir/log" >&2
        echo "!! s3-fake: moto exited at start" >&2
        rm -f "$dir/pid"
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    cat "$dir/log" >&2
    echo "!! s3-fake: moto did not listen on port $port in 30 s" >&2
    stop
    exit 1
fi

rc=0
"$venv/bin/python" - "$endpoint" "$region" "$bucket" >"$dir/env.new" <<'PY' || rc=$?
import datetime
import hashlib
import json
import os
import shlex
import sys

import boto3
import requests
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

endpoint, region, bucket = sys.argv[1:4]
# One attempt per call: a retry during the setup would spend one of the unchecked requests.
config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fail(msg):
    log("!! s3-fake: " + msg)
    sys.exit(1)


def client(service, key, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=config,
    )


def error_of(call):
    """The (HTTP status, S3 error code) a call fails with, or (200, None)."""
    try:
        call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"].get("Code")
    return 200, None


def signed(method, path, key, secret, body=b"", region=region, payload_hash=None, at=None):
    """A raw request signed with SigV4 as given (so it can be signed wrong on purpose)."""
    url = endpoint + path
    req = AWSRequest(method=method, url=url, data=body)
    auth = S3SigV4Auth(Credentials(key, secret), "s3", region)
    req.context["timestamp"] = (at or datetime.datetime.now(datetime.timezone.utc)).strftime(SIGV4_TIMESTAMP)
    auth._modify_request_before_signing(req)  # X-Amz-Date, X-Amz-Content-SHA256 of the body
    if payload_hash is not None:
        del req.headers["X-Amz-Content-SHA256"]
        req.headers["X-Amz-Content-SHA256"] = payload_hash
    auth._inject_signature_to_request(req, auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req))
    return requests.request(method, url, data=body, headers=dict(req.headers.items()), timeout=60)


# --- setup: the only unchecked requests (the credentials are never looked at) ---
iam = client("iam", "setup", "setup")
user = "xinge-test"
iam.create_user(UserName=user)
iam.put_user_policy(
    UserName=user,
    PolicyName="s3-all",
    PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    ),
)
key = iam.create_access_key(UserName=user)["AccessKey"]
kid, secret = key["AccessKeyId"], key["SecretAccessKey"]
client("s3", "setup", "setup").create_bucket(Bucket=bucket)  # us-east-1: no LocationConstraint

s3 = client("s3", kid, secret)

# --- from here on every request must be signed ---
r = requests.get("%s/%s?list-type=2" % (endpoint, bucket), timeout=30)
if r.status_code < 400:
    fail("an unsigned ListObjectsV2 was answered %d: moto is not checking signatures" % r.status_code)
unsigned_status = r.status_code
r = requests.put("%s/%s/unsigned" % (endpoint, bucket), data=b"x", timeout=30)
if r.status_code < 400:
    fail("an unsigned PutObject was answered %d" % r.status_code)
if error_of(lambda: s3.head_object(Bucket=bucket, Key="unsigned"))[0] != 404:
    fail("an unsigned PutObject that was refused wrote its object")
if unsigned_status != 403 or r.status_code != 403:
    log(
        "note: moto refuses a request without an Authorization header with %d (ListObjectsV2) "
        "and %d (PutObject of a new key); S3 answers 403 AccessDenied" % (unsigned_status, r.status_code)
    )

wrong = client("s3", kid, "x" + secret[1:])
for what, call in [
    ("GetObject", lambda: wrong.get_object(Bucket=bucket, Key="k")),
    ("PutObject", lambda: wrong.put_object(Bucket=bucket, Key="k", Body=b"x")),
    ("ListObjectsV2", lambda: wrong.list_objects_v2(Bucket=bucket)),
]:
    got = error_of(call)
    if got != (403, "SignatureDoesNotMatch"):
        fail("%s signed with a wrong secret: %s, not 403 SignatureDoesNotMatch" % (what, got))
got = error_of(lambda: client("s3", "AKIA" + "0" * 16, secret).list_objects_v2(Bucket=bucket))
if got != (403, "InvalidAccessKeyId"):
    fail("a request signed by an unknown key: %s, not 403 InvalidAccessKeyId" % (got,))

# Signed: the ordinary calls.
body = os.urandom(1000)
s3.put_object(Bucket=bucket, Key="check/plain", Body=body)
if s3.get_object(Bucket=bucket, Key="check/plain")["Body"].read() != body:
    fail("GetObject did not give back what PutObject stored")
if s3.head_object(Bucket=bucket, Key="check/plain")["ContentLength"] != len(body):
    fail("HeadObject: wrong ContentLength")
if [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="check/").get("Contents", [])] != ["check/plain"]:
    fail("ListObjectsV2 does not list the one object")

# Multipart: parts but the last are at least 5 MiB in S3 (and here).
parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(1024 * 1024 + 7)]
up = s3.create_multipart_upload(Bucket=bucket, Key="check/multipart")["UploadId"]
parts = []
for n, data in enumerate(parts_data, 1):
    etag = s3.upload_part(Bucket=bucket, Key="check/multipart", UploadId=up, PartNumber=n, Body=data)["ETag"]
    parts.append({"PartNumber": n, "ETag": etag})
done = s3.complete_multipart_upload(
    Bucket=bucket, Key="check/multipart", UploadId=up, MultipartUpload={"Parts": parts}
)
got = s3.get_object(Bucket=bucket, Key="check/multipart")["Body"].read()
if hashlib.sha256(got).digest() != hashlib.sha256(b"".join(parts_data)).digest():
    fail("a multipart upload's object is not its parts joined")
if not done["ETag"].strip('"').endswith("-2"):
    log("note: a 2-part object's ETag is %s; S3's ends in -2" % done["ETag"])
up = s3.create_multipart_upload(Bucket=bucket, Key="check/small-parts")["UploadId"]
parts = [
    {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="check/small-parts", UploadId=up, PartNumber=n, Body=b"x" * 1024)["ETag"]}
    for n in (1, 2)
]
got = error_of(
    lambda: s3.complete_multipart_upload(Bucket=bucket, Key="check/small-parts", UploadId=up, MultipartUpload={"Parts": parts})
)
if got != (400, "EntityTooSmall"):
    fail("completing a multipart upload whose first part is 1 KiB: %s, not 400 EntityTooSmall" % (got,))
s3.abort_multipart_upload(Bucket=bucket, Key="check/small-parts", UploadId=up)

# Conditional writes (If-None-Match: *): a new key is written, an existing one is not.
s3.put_object(Bucket=bucket, Key="check/once", Body=b"first", IfNoneMatch="*")
got = error_of(lambda: s3.put_object(Bucket=bucket, Key="check/once", Body=b"second", IfNoneMatch="*"))
if got != (412, "PreconditionFailed"):
    fail("PutObject with If-None-Match: * on an existing key: %s, not 412 PreconditionFailed" % (got,))
if s3.get_object(Bucket=bucket, Key="check/once")["Body"].read() != b"first":
    fail("a PutObject refused with 412 replaced the object")
up = s3.create_multipart_upload(Bucket=bucket, Key="check/once")["UploadId"]
etag = s3.upload_part(Bucket=bucket, Key="check/once", UploadId=up, PartNumber=1, Body=b"third")["ETag"]
got = error_of(
    lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key="check/once", UploadId=up, IfNoneMatch="*", MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
)
if got != (412, "PreconditionFailed"):
    fail("CompleteMultipartUpload with If-None-Match: * on an existing key: %s, not 412" % (got,))
s3.abort_multipart_upload(Bucket=bucket, Key="check/once", UploadId=up)

# What S3 refuses and this moto lets through: notes, so a green test is read for what it is.
now = datetime.datetime.now(datetime.timezone.utc)
for what, s3_says, r in [
    ("a body whose sha256 is not its x-amz-content-sha256", "400 XAmzContentSHA256Mismatch",
     signed("PUT", "/%s/check/probe" % bucket, kid, secret, b"data", payload_hash=hashlib.sha256(b"other").hexdigest())),
    ("a request signed 2 hours ago", "403 RequestTimeTooSkewed",
     signed("PUT", "/%s/check/probe" % bucket, kid, secret, b"data", at=now - datetime.timedelta(hours=2))),
    ("a signature scoped to eu-west-1 for a us-east-1 bucket", "400 AuthorizationHeaderMalformed",
     signed("PUT", "/%s/check/probe" % bucket, kid, secret, b"data", region="eu-west-1")),
    ("a presigned GetObject URL", "200",
     requests.get(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "check/plain"}, ExpiresIn=60), timeout=30)),
]:
    if r.status_code == 200 and not s3_says.startswith("200"):
        log("note: moto accepts %s (S3: %s)" % (what, s3_says))
    elif not s3_says.startswith(str(r.status_code)):
        log("note: moto answers %s with %d (S3: %s)" % (what, r.status_code, s3_says))

# Leave the bucket empty for the tests.
for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
    s3.delete_object(Bucket=bucket, Key=o["Key"])
if s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) != 0:
    fail("the bucket is not empty after the checks")

for name, value in [
    ("S3_ENDPOINT", endpoint),
    ("S3_REGION", region),
    ("S3_BUCKET", bucket),
    ("S3_ACCESS_KEY_ID", kid),
    ("S3_SECRET_ACCESS_KEY", secret),
]:
    print("%s=%s" % (name, shlex.quote(value)))
PY
if [ "$rc" -ne 0 ]; then
    echo "== moto log (last 20 lines)" >&2
    tail -n 20 "$dir/log" >&2
    stop
    rm -f "$dir/env.new"
    exit "$rc"
fi
echo "S3_PID=$pid" >>"$dir/env.new"
mv "$dir/env.new" "$dir/env"
echo "== s3-fake: moto $("$venv/bin/pip" freeze | sed -n 's/^moto==//p') at $endpoint (pid $pid), checking signatures; bucket $bucket" >&2
cat "$dir/env"

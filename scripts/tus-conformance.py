#!/usr/bin/env python3
"""tus 1.0.0 conformance of xinge's /v1/uploads, checked with an independent client.

The uploads go through tuspy (the tus project's Python client, imported as tusclient):
files of 0, 1 and 1000 bytes, ~3 MB in 256 KiB PATCHes, ~5 MB with tuspy's Upload-Checksum
(sha1), ~1.5 MB with sha256 (tuspy's uploader told to use it), and one upload stopped
part-way and finished by a new uploader given only its URL. Each one is then checked
through the server's own API: GET /v1/uploads/{id} must say offset == length and name
media of that size, and the bytes behind its download URL must hash as the file does.
What tuspy never sends is checked with raw requests: OPTIONS, the version header,
creation-with-upload, a PATCH at a wrong offset (409), a bad checksum (460) and an unknown
algorithm (400), a wrong Content-Type (415), bytes past Upload-Length, metadata echoed by
HEAD, Tus-Max-Size, expiration, termination (DELETE, then 404), the Tus-Resumable header on
refusals, and whether a connection stays usable after a PATCH refused unread.

Usage: tus-conformance.py [--base-url URL] [--token TOKEN] [--only NAME ...] [--list]
       (or XINGE_BASE_URL / XINGE_TOKEN; scripts/tus-conformance.sh sets both)

Runs every check even after one fails, prints one line per check, and exits 1 if any
failed (each failure says the request, the answer and what the spec asks).
"""

import argparse
import base64
import email.utils
import hashlib
import http.client
import os
import sys
import tempfile
import time
import traceback
from urllib.parse import urljoin, urlsplit

import requests
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader import Uploader

TUS = "1.0.0"
OCTETS = "application/offset+octet-stream"
CHUNK = 256 * 1024
EXTENSIONS = ["creation", "creation-with-upload", "checksum", "expiration", "termination"]


class Failure(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Failure(msg)


def show(r):
    """A request and its answer, for a failure message."""
    body = r.content[:300]
    return "%s %s -> %d %s body=%r" % (
        r.request.method,
        r.request.url,
        r.status_code,
        dict(r.headers),
        body,
    )


def b64(text):
    return base64.b64encode(text.encode()).decode()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class CountingUploader(Uploader):
    """tuspy's uploader, counting the PATCH requests it makes."""

    patches = 0

    def _do_request(self):
        self.patches += 1
        super()._do_request()


class Sha256Uploader(CountingUploader):
    """tuspy checksums with sha1 only; this class attribute is how it picks the
    algorithm, so the server's other advertised algorithm gets a real client too."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


class Fresh:
    """requests' functions (get, patch, ...) with a timeout. A new connection for every
    request, as tuspy makes: a check must not fail for a connection an earlier one left
    behind (check_keep_alive looks at that on its own)."""

    def __getattr__(self, method):
        call = getattr(requests, method)
        return lambda *args, **kwargs: call(*args, timeout=60, **kwargs)


class Conformance:
    def __init__(self, base, token, scratch):
        self.base = base.rstrip("/")
        self.uploads = self.base + "/v1/uploads"
        self.auth = {"Authorization": "Bearer " + token}
        self.scratch = scratch
        self.http = Fresh()
        self.client = TusClient(self.uploads, headers=dict(self.auth))

    # --- helpers ---

    def tus_headers(self, **extra):
        h = {"Tus-Resumable": TUS}
        h.update(self.auth)
        h.update({k.replace("_", "-"): v for k, v in extra.items()})
        return h

    def tus_answer(self, r):
        """Every answer but OPTIONS's carries Tus-Resumable (tus 1.0.0, "Tus-Resumable")."""
        expect(
            r.headers.get("Tus-Resumable") == TUS,
            "answer without `Tus-Resumable: 1.0.0` (the spec: it MUST be included in every "
            "request and response except for OPTIONS requests): " + show(r),
        )

    def head(self, url):
        return self.http.head(url, headers=self.tus_headers())

    def offset_of(self, url):
        r = self.head(url)
        expect(r.status_code == 200, "HEAD of a live upload: " + show(r))
        return int(r.headers["Upload-Offset"])

    def create(self, length, body=None, filename="raw.bin", **extra):
        h = self.tus_headers(Upload_Length=str(length), Upload_Metadata="filename " + b64(filename))
        h.update({k.replace("_", "-"): v for k, v in extra.items()})
        if body is not None:
            h["Content-Type"] = OCTETS
        r = self.http.post(self.uploads, headers=h, data=body)
        expect(r.status_code == 201 and "Location" in r.headers, "creation: " + show(r))
        self.tus_answer(r)
        return urljoin(self.uploads, r.headers["Location"]), r

    def patch(self, url, offset, data, content_type=OCTETS, **extra):
        h = self.tus_headers(Upload_Offset=str(offset), **extra)
        if content_type is not None:
            h["Content-Type"] = content_type
        return self.http.patch(url, headers=h, data=data)

    def write(self, name, data):
        path = os.path.join(self.scratch, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def verify(self, url, data, filename, media_id=None):
        """The upload at `url` is complete and became media whose bytes are `data`."""
        upload_id = url.rstrip("/").rsplit("/", 1)[1]
        r = self.http.get(self.uploads + "/" + upload_id, headers=self.auth)
        expect(r.status_code == 200, "upload status: " + show(r))
        st = r.json()
        expect(
            st["offset"] == st["length"] == len(data),
            "upload status says offset %s, length %s; the file has %d bytes: %s"
            % (st["offset"], st["length"], len(data), show(r)),
        )
        media = st.get("media")
        expect(
            media is not None,
            "the upload is complete (offset == length == %d) but names no media: %s"
            % (len(data), show(r)),
        )
        expect(media["size"] == len(data), "media.size %s, file %d bytes" % (media["size"], len(data)))
        expect(media.get("name") == filename, "media.name %r, Upload-Metadata filename %r" % (media.get("name"), filename))
        if media_id is not None:
            expect(media["id"] == media_id, "Xinge-Media-Id %r, upload status media.id %r" % (media_id, media["id"]))
        h = self.head(url)
        expect(h.status_code == 200, "HEAD of a complete upload: " + show(h))
        self.tus_answer(h)
        expect(
            h.headers.get("Upload-Offset") == h.headers.get("Upload-Length") == str(len(data)),
            "HEAD of a complete upload must give Upload-Offset == Upload-Length == %d: %s" % (len(data), show(h)),
        )
        r = self.http.get(
            "%s/v1/media/%s/url" % (self.base, media["id"]),
            params={"variant": "original"},
            headers=self.auth,
        )
        expect(r.status_code == 200, "download URL: " + show(r))
        # The signed URL needs no token: none is sent.
        d = self.http.get(urljoin(self.base + "/", r.json()["url"]))
        expect(d.status_code == 200, "download: " + show(d))
        expect(
            sha256(d.content) == sha256(data),
            "downloaded %d bytes, sha256 %s; uploaded %d bytes, sha256 %s"
            % (len(d.content), sha256(d.content), len(data), sha256(data)),
        )
        return media

    def tuspy_upload(self, name, size, chunk_size=CHUNK, checksum=None):
        """Uploads `size` random bytes through tuspy and checks the result."""
        data = os.urandom(size)
        filename = "%s-%d.bin" % (name, size)
        cls = Sha256Uploader if checksum == "sha256" else CountingUploader
        up = cls(
            file_path=self.write(filename, data),
            client=self.client,
            chunk_size=chunk_size,
            metadata={"filename": filename, "filetype": "application/octet-stream"},
            upload_checksum=checksum is not None,
        )
        up.upload()
        media_id = None
        if up.request is not None:
            media_id = up.request.response_headers.get("xinge-media-id")
            expect(media_id, "the PATCH that brought the last byte named no media (Xinge-Media-Id)")
        self.verify(up.url, data, filename, media_id)
        return "%d bytes, %d PATCH%s" % (size, up.patches, "" if up.patches == 1 else "es")

    # --- checks ---

    def check_options(self):
        r = self.http.options(self.uploads)
        expect(r.status_code in (200, 204), "OPTIONS: " + show(r))
        versions = [v.strip() for v in r.headers.get("Tus-Version", "").split(",")]
        expect(TUS in versions, "OPTIONS: Tus-Version lacks 1.0.0: " + show(r))
        ext = [v.strip() for v in r.headers.get("Tus-Extension", "").split(",")]
        missing = [e for e in EXTENSIONS if e not in ext]
        expect(not missing, "OPTIONS: Tus-Extension lacks %s: %s" % (missing, show(r)))
        algs = [v.strip() for v in r.headers.get("Tus-Checksum-Algorithm", "").split(",")]
        expect("sha1" in algs and "sha256" in algs, "OPTIONS: Tus-Checksum-Algorithm: " + show(r))
        max_size = int(r.headers.get("Tus-Max-Size", "0"))
        expect(max_size >= 6 << 20, "Tus-Max-Size %d is below this test's largest file" % max_size)
        return "extensions %s, checksums %s, max %d" % (",".join(ext), ",".join(algs), max_size)

    def check_version(self):
        h = self.tus_headers(Upload_Length="10")
        del h["Tus-Resumable"]
        r = self.http.post(self.uploads, headers=h)
        expect(r.status_code == 412, "creation without Tus-Resumable must get 412: " + show(r))
        expect(TUS in r.headers.get("Tus-Version", ""), "a 412 for the version MUST include Tus-Version: " + show(r))
        url, _ = self.create(10)
        p = self.patch(url, 0, b"0123456789", Tus_Resumable="0.2.2")
        expect(p.status_code == 412, "PATCH with Tus-Resumable: 0.2.2 must get 412: " + show(p))
        expect(self.offset_of(url) == 0, "a refused PATCH moved the offset")
        self.tus_answer(r)
        self.tus_answer(p)
        return "412 with Tus-Version"

    def check_metadata(self):
        # A value may be empty, and then the space may be left out (tus 1.0.0, Upload-Metadata);
        # the pair with its space is not last, since HTTP drops a field value's trailing
        # whitespace (RFC 9110, 5.5).
        sent = "filename %s,note ,is_confidential" % b64("meta.bin")
        url, _ = self.create(10, Upload_Metadata=sent)
        h = self.head(url)
        expect(h.status_code == 200, "HEAD: " + show(h))
        expect(
            h.headers.get("Upload-Metadata") == sent,
            "HEAD of an upload created with Upload-Metadata %r (the spec, creation: responses "
            "to HEAD requests MUST include the Upload-Metadata header and its value as specified "
            "by the Client during the creation): %s" % (sent, show(h)),
        )
        expect(h.headers.get("Cache-Control") == "no-store", "HEAD MUST carry Cache-Control: no-store: " + show(h))
        return "HEAD gives Upload-Metadata as sent"

    def check_max_size(self):
        max_size = int(self.http.options(self.uploads).headers["Tus-Max-Size"])
        r = self.http.post(self.uploads, headers=self.tus_headers(Upload_Length=str(max_size + 1)))
        expect(
            r.status_code == 413,
            "creation of Tus-Max-Size + 1 bytes (the spec: the Server MUST respond with 413): " + show(r),
        )
        self.tus_answer(r)
        return "413 for Tus-Max-Size + 1 bytes"

    def check_unauthorized(self):
        url, _ = self.create(10)
        h = self.http.head(url, headers={"Tus-Resumable": TUS})
        expect(h.status_code == 401 and "Upload-Offset" not in h.headers, "HEAD without a token: " + show(h))
        self.tus_answer(h)
        return "401"

    def check_empty(self):
        try:
            return self.tuspy_upload("empty", 0)
        except Failure as e:
            raise Failure(
                "%s -- tuspy sends only the POST for an empty file (so does tus-js-client), as the "
                "spec has it (creation: Upload-Length MAY be 0; \"such an upload is immediately "
                "complete after its creation without transferring data using PATCH requests\")" % e
            )

    def check_one_byte(self):
        return self.tuspy_upload("one-ünïcode", 1)  # UTF-8 in Upload-Metadata

    def check_small(self):
        # tuspy's default chunk size: the whole file in one PATCH.
        return self.tuspy_upload("small", 1000, chunk_size=sys.maxsize)

    def check_chunked(self):
        return self.tuspy_upload("chunked", 3 * 1024 * 1024 + 123)

    def check_sha1(self):
        return self.tuspy_upload("sha1", 5 * 1024 * 1024 + 7, checksum="sha1")

    def check_sha256(self):
        return self.tuspy_upload("sha256", 3 * 512 * 1024 + 5, checksum="sha256")

    def check_resume(self):
        size, stop = 2 * 1024 * 1024 + 11, 700_001  # stops inside a chunk
        data = os.urandom(size)
        filename = "resumed-%d.bin" % size
        path = self.write(filename, data)
        meta = {"filename": filename}
        first = CountingUploader(file_path=path, client=self.client, chunk_size=CHUNK, metadata=meta)
        first.upload(stop_at=stop)
        expect(first.offset == stop, "tuspy stopped at %d, not %d" % (first.offset, stop))
        expect(self.offset_of(first.url) == stop, "HEAD after the interruption: offset is not %d" % stop)
        # A new uploader that knows only the URL: it asks the server (HEAD) where to go on.
        second = CountingUploader(file_path=path, client=self.client, url=first.url, chunk_size=CHUNK, metadata=meta)
        expect(second.offset == stop, "the resuming uploader got offset %d from HEAD, not %d" % (second.offset, stop))
        second.upload()
        media_id = second.request.response_headers.get("xinge-media-id")
        expect(media_id, "the last PATCH named no media (Xinge-Media-Id)")
        self.verify(second.url, data, filename, media_id)
        return "%d bytes: %d PATCHes to %d, then %d by a new uploader" % (size, first.patches, stop, second.patches)

    def check_creation_with_upload(self):
        data = os.urandom(3000)
        url, r = self.create(len(data), body=data[:1000], filename="cwu.bin")
        expect(r.headers.get("Upload-Offset") == "1000", "creation with 1000 bytes: Upload-Offset must be 1000: " + show(r))
        r = self.patch(url, 1000, data[1000:])
        expect(r.status_code == 204, "PATCH after creation-with-upload: " + show(r))
        self.tus_answer(r)
        self.verify(url, data, "cwu.bin", r.headers.get("Xinge-Media-Id"))
        # The whole file in the creation request.
        whole = os.urandom(500)
        url, r = self.create(len(whole), body=whole, filename="cwu-whole.bin")
        expect(r.headers.get("Upload-Offset") == "500", "creation with the whole file: " + show(r))
        self.verify(url, whole, "cwu-whole.bin", r.headers.get("Xinge-Media-Id"))
        return "partial and whole file in the POST"

    def check_wrong_offset(self):
        data = os.urandom(1000)
        url, _ = self.create(len(data))
        r = self.patch(url, 0, data[:100])
        expect(r.status_code == 204 and r.headers.get("Upload-Offset") == "100", "first PATCH: " + show(r))
        for wrong in (50, 0, 200):
            r = self.patch(url, wrong, data[wrong:wrong + 100])
            expect(
                r.status_code == 409,
                "PATCH at Upload-Offset %d while the upload is at 100 (the spec: the Server MUST "
                "respond with 409 Conflict if the offsets do not match): %s" % (wrong, show(r)),
            )
            self.tus_answer(r)
        expect(self.offset_of(url) == 100, "a refused PATCH moved the offset")
        r = self.patch(url, 100, data[100:])
        expect(r.status_code == 204, "PATCH at the right offset after 409s: " + show(r))
        return "409 at offsets 50, 0, 200"

    def check_checksum(self):
        data = os.urandom(2000)
        url, _ = self.create(len(data))
        digest = lambda alg, b: base64.b64encode(hashlib.new(alg, b).digest()).decode()
        for alg in ("sha1", "sha256"):
            r = self.patch(url, 0, data[:1000], Upload_Checksum="%s %s" % (alg, digest(alg, b"other bytes")))
            expect(
                r.status_code == 460,
                "PATCH with a %s Upload-Checksum of other bytes (the spec: the Server MUST respond "
                "with 460 Checksum Mismatch and discard the bytes): %s" % (alg, show(r)),
            )
            self.tus_answer(r)
            expect(self.offset_of(url) == 0, "bytes of a 460 PATCH were kept")
        r = self.patch(url, 0, data[:1000], Upload_Checksum="md5 " + digest("md5", data[:1000]))
        expect(
            r.status_code == 400,
            "PATCH with Upload-Checksum md5 (not in Tus-Checksum-Algorithm; the spec: the "
            "Server MUST respond with 400 Bad Request): " + show(r),
        )
        expect(self.offset_of(url) == 0, "bytes of a refused PATCH were kept")
        r = self.patch(url, 0, data[:1000], Upload_Checksum="sha256 " + digest("sha256", data[:1000]))
        expect(r.status_code == 204 and r.headers.get("Upload-Offset") == "1000", "PATCH with the right sha256: " + show(r))
        r = self.patch(url, 1000, data[1000:], Upload_Checksum="sha1 " + digest("sha1", data[1000:]))
        expect(r.status_code == 204, "PATCH with the right sha1: " + show(r))
        self.verify(url, data, "raw.bin", r.headers.get("Xinge-Media-Id"))
        return "460 for sha1 and sha256 mismatches, 400 for md5"

    def check_content_type(self):
        url, _ = self.create(10)
        r = self.patch(url, 0, b"0123456789", content_type="application/octet-stream")
        expect(
            r.status_code == 415,
            "PATCH with Content-Type application/octet-stream (the spec: the Server SHOULD "
            "return 415 Unsupported Media Type): " + show(r),
        )
        self.tus_answer(r)
        expect(self.offset_of(url) == 0, "a refused PATCH moved the offset")
        return "415"

    def check_past_length(self):
        url, _ = self.create(10)
        r = self.patch(url, 0, b"0123456789ABCDEF")
        # The core spec does not name the status; tusd and this server's documentation say 413.
        expect(r.status_code == 413, "PATCH of 16 bytes into a 10-byte upload: " + show(r))
        self.tus_answer(r)
        expect(self.offset_of(url) == 0, "bytes past Upload-Length were kept")
        return "413, nothing kept"

    def check_expiration(self):
        url, r = self.create(10)
        now = time.time()
        dates = {"201": r.headers.get("Upload-Expires")}
        h = self.head(url)
        dates["HEAD"] = h.headers.get("Upload-Expires")
        r = self.patch(url, 0, b"01234")
        dates["204"] = r.headers.get("Upload-Expires")
        st = self.http.get(url, headers=self.auth).json()
        for where, value in dates.items():
            expect(value, "the %s answer has no Upload-Expires (the spec: it MUST be included if the upload is going to expire)" % where)
            try:
                at = email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                raise Failure("Upload-Expires %r of the %s answer is not an RFC 9110 date" % (value, where))
            expect(at > now, "Upload-Expires %r is not in the future" % value)
            expect(int(at) == st["expires_ms"] // 1000, "Upload-Expires %r, expires_ms %d" % (value, st["expires_ms"]))
        return "Upload-Expires %s" % dates["HEAD"]

    def check_keep_alive(self):
        """A PATCH refused before its body is read (here 409) leaves a connection a client may
        reuse, unless the answer says `Connection: close`."""
        url, _ = self.create(1024 * 1024)
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("PATCH", u.path, body=os.urandom(CHUNK), headers=self.tus_headers(Upload_Offset="5", Content_Type=OCTETS))
        r = conn.getresponse()
        r.read()
        expect(r.status == 409, "PATCH at a wrong offset: %d" % r.status)
        if "close" in (r.getheader("Connection") or "").lower():
            conn.close()
            return "409 with Connection: close"
        time.sleep(0.3)  # long enough for a close on loopback to have arrived
        try:
            conn.request("GET", u.path, headers=self.auth)
            g = conn.getresponse()
            g.read()
        except (OSError, http.client.HTTPException) as e:
            raise Failure(
                "after a 409 to a PATCH with a %d-byte body, answered without `Connection: close` "
                "(headers %s), the server closed the connection: the next request on it (a GET) "
                "failed with %r. A keep-alive client (a browser, requests.Session) loses that "
                "request; RFC 9112 9.6: a server that closes after a response SHOULD send "
                "`Connection: close` in it (or it reads the rest of the body first)"
                % (CHUNK, dict(r.getheaders()), e)
            )
        finally:
            conn.close()
        expect(g.status == 200, "GET on the same connection after a 409: %d" % g.status)
        return "the connection stays usable after a 409"

    def check_termination(self):
        data = os.urandom(1024 * 1024)
        up = CountingUploader(file_path=self.write("terminated.bin", data), client=self.client, chunk_size=CHUNK)
        up.upload(stop_at=CHUNK)  # tuspy 1.1 has no termination call: the DELETE is raw
        r = self.http.delete(up.url, headers=self.tus_headers())
        expect(r.status_code == 204, "DELETE of an upload (the spec: 204 No Content): " + show(r))
        self.tus_answer(r)
        h = self.head(up.url)
        expect(
            h.status_code in (404, 410) and "Upload-Offset" not in h.headers,
            "HEAD after DELETE (the spec: 404 Not Found or 410 Gone, without Upload-Offset): " + show(h),
        )
        p = self.patch(up.url, CHUNK, data[CHUNK:2 * CHUNK])
        expect(p.status_code in (404, 410), "PATCH after DELETE (the spec: 404 or 410): " + show(p))
        s = self.http.get(up.url, headers=self.auth)
        expect(s.status_code == 404, "upload status after DELETE: " + show(s))
        try:  # and tuspy, resuming it, is told so
            CountingUploader(file_path=up.file_path, client=self.client, url=up.url)
        except TusCommunicationError as e:
            expect(e.status_code in (404, 410), "tuspy's HEAD after DELETE: %s" % e.status_code)
        else:
            raise Failure("tuspy resumed a terminated upload")
        return "DELETE 204, then HEAD %d, PATCH %d" % (h.status_code, p.status_code)


CHECKS = [name[len("check_"):] for name in vars(Conformance) if name.startswith("check_")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", default=os.environ.get("XINGE_BASE_URL"))
    ap.add_argument("--token", default=os.environ.get("XINGE_TOKEN"))
    ap.add_argument("--only", nargs="+", choices=CHECKS, metavar="NAME", help="run these checks only")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(CHECKS))
        return 0
    if not args.base_url or not args.token:
        ap.error("give --base-url and --token (or XINGE_BASE_URL and XINGE_TOKEN)")
    failed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tus-conformance-") as scratch:
        c = Conformance(args.base_url, args.token, scratch)
        for name in args.only or CHECKS:
            t0 = time.monotonic()
            try:
                detail = getattr(c, "check_" + name)()
            except Failure as e:
                failed.append(name)
                print("FAIL %-22s %s" % (name, e), flush=True)
            except TusCommunicationError as e:
                failed.append(name)
                print(
                    "FAIL %-22s tuspy: %s (status %s, body %r)" % (name, e, e.status_code, (e.response_content or b"")[:300]),
                    flush=True,
                )
            except Exception:
                failed.append(name)
                print("FAIL %-22s %s" % (name, traceback.format_exc().strip()), flush=True)
            else:
                print("ok   %-22s %s (%.2f s)" % (name, detail, time.monotonic() - t0), flush=True)
    ran = len(args.only or CHECKS)
    print("%d passed, %d failed (%.1f s)" % (ran - len(failed), len(failed), time.monotonic() - started))
    if failed:
        print("tus conformance FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

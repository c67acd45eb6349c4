"""A hostile client against a real `bentoml serve` on 127.0.0.1: malformed JSON of every kind, header
tricks, oversize bodies, slow clients. Whatever is sent: never a 500, the server never crashes, and a
legal request is served right after. Bounded in time (about 30 s with the server start-up)."""
from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_serve_support import PLAIN_KEY, Server, built, metric_samples, toolchain_env, write_keys  # noqa: F401

pytestmark = pytest.mark.server

TIMEOUT_S = 3.0      # the server's TOOLCHAIN_TIMEOUT_S: bounds how long a slow client can hold a request
BODY_CAP = 1 << 20


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_TIMEOUT_S=str(TIMEOUT_S),
                        TOOLCHAIN_MAX_BODY_BYTES=str(BODY_CAP))
    running = Server(built.tag, env, root / "server.log").wait_ready()
    yield running
    running.stop()


def raw_http(body: bytes = b'{"texts": ["profit rose"]}', headers: list[tuple[str, str]] | None = None,
             path: str = "/classify", method: str = "POST", length: bool = True) -> bytes:
    """One HTTP/1.1 request, built by hand so that anything can be wrong with it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    given = {name.lower() for name, _ in headers or []}
    if "authorization" not in given and "x-api-key" not in given:
        lines.append(f"Authorization: Bearer {PLAIN_KEY}")
    if "content-type" not in given:
        lines.append("Content-Type: application/json")
    if length and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, raw: bytes, wait: float = 10.0, pause_after: int | None = None,
             trickle_s: float = 0.0) -> int | None:
    """Send ``raw`` (optionally the first ``pause_after`` bytes, then the rest one byte per ``trickle_s``);
    the response's status, or None when the server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            if pause_after is None:
                sock.sendall(raw)
            else:
                sock.sendall(raw[:pause_after])
                for i in range(pause_after, len(raw)):
                    time.sleep(trickle_s)
                    sock.sendall(raw[i:i + 1])
        except OSError:  # the server answered and closed before the whole request was sent
            pass
        return read_status(sock)


def read_status(sock: socket.socket) -> int | None:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else None


DEEP = 100_000
JSON_PROBES = {
    "truncated object": b'{"texts": ["profit',
    "truncated after key": b'{"texts": ',
    "just an open brace": b"{",
    "trailing garbage": b'{"texts": ["profit rose"]} garbage',
    "trailing comma": b'{"texts": ["profit rose"],}',
    "two documents": b'{"texts": ["a"]}{"texts": ["b"]}',
    "NaN": b'{"texts": [NaN]}',
    "Infinity topic": b'{"texts": ["a"], "topic": Infinity}',
    "-Infinity": b'{"texts": [-Infinity]}',
    "5000-digit int": b'{"texts": [' + b"9" * 5000 + b"]}",
    "50000-digit int topic": b'{"texts": ["a"], "topic": ' + b"1" * 50_000 + b"}",
    "huge exponent float": b'{"texts": [1e999999]}',
    "5000-digit float": b'{"texts": [0.' + b"1" * 5000 + b"]}",
    "arrays 100k deep": b"[" * DEEP + b"]" * DEEP,
    "objects 100k deep": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "texts 100k deep": b'{"texts": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "duplicate keys": b'{"texts": ["a"], "texts": ["b"]}',
    "duplicate keys nested": b'{"texts": ["a"], "topic": {"x": 1, "x": 2}}',
    "texts an object": b'{"texts": {"0": "a"}}',
    "texts a number": b'{"texts": 7}',
    "texts true": b'{"texts": true}',
    "texts null": b'{"texts": null}',
    "texts nested lists": b'{"texts": [["a"]]}',
    "text an object": b'{"texts": [{"text": "a"}]}',
    "topic a list": b'{"texts": ["a"], "topic": ["AAPL"]}',
    "body a string": b'"profit rose"',
    "body a number": b"42",
    "body null": b"null",
    "body an empty object": b"{}",
    "unknown field": b'{"texts": ["a"], "model": "other"}',
    "empty body": b"",
    "whitespace body": b" \r\n\t ",
    "NUL bytes": b"\x00" * 16,
    "raw control char in string": b'{"texts": ["a\x01b"]}',
    "lone surrogate escape": b'{"texts": ["\\udc80"]}',
    "surrogate key": b'{"\\ud800": 1}',
    "latin-1 text": b'{"texts": ["caf\xe9"]}',
    "overlong UTF-8": b'{"texts": ["\xc0\xaf"]}',
    "invalid UTF-8 start": b"\xff\xfe{}",
    "UTF-16 JSON": '{"texts": ["a"]}'.encode("utf-16"),
    "UTF-32 JSON": '{"texts": ["a"]}'.encode("utf-32"),
    "single quotes": b"{'texts': ['a']}",
    "comments": b'{"texts": ["a"] /* hi */}',
    "10k empty strings": json.dumps({"texts": [""] * 10_000}).encode(),
    "100k items": json.dumps({"texts": ["a"] * 100_000}).encode(),
    "text of 1 MB minus": json.dumps({"texts": ["a" * (BODY_CAP - 100)]}).encode(),
}
SERVED = {"BOM": b'\xef\xbb\xbf{"texts": ["profit rose"]}'}

HEADER_PROBES = {
    "duplicate Content-Length, equal": raw_http(headers=[("Content-Length", "26"), ("Content-Length", "26")]),
    "duplicate Content-Length, different": raw_http(headers=[("Content-Length", "26"), ("Content-Length", "5")]),
    "Content-Length not a number": raw_http(headers=[("Content-Length", "abc")]),
    "Content-Length negative": raw_http(headers=[("Content-Length", "-1")]),
    "Content-Length huge": raw_http(headers=[("Content-Length", "9" * 30)]),
    "Content-Length shorter than body": raw_http(body=b'{"texts": ["profit rose"]}trailing-bytes-as-next-request',
                                                 headers=[("Content-Length", "26")]),
    "Content-Length and chunked": raw_http(body=b"1a\r\n" + b'{"texts": ["profit rose"]}' + b"\r\n0\r\n\r\n",
                                           headers=[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]),
    "chunked, bad chunk size": raw_http(body=b"zz\r\nabc\r\n0\r\n\r\n", headers=[("Transfer-Encoding", "chunked")]),
    "chunked, chunk size overflow": raw_http(body=b"f" * 40 + b"\r\nabc\r\n0\r\n\r\n",
                                             headers=[("Transfer-Encoding", "chunked")]),
    "Transfer-Encoding gzip": raw_http(headers=[("Transfer-Encoding", "gzip")]),
    "no Content-Type": raw_http(headers=[("X-Nothing", "1")], body=b'{"texts": ["a"]}').replace(
        b"Content-Type: application/json\r\n", b""),
    "Content-Type text/plain": raw_http(headers=[("Content-Type", "text/plain")]),
    "Content-Type form": raw_http(headers=[("Content-Type", "application/x-www-form-urlencoded")]),
    "Content-Type multipart": raw_http(headers=[("Content-Type", "multipart/form-data; boundary=x")]),
    "Content-Type pickle": raw_http(headers=[("Content-Type", "application/vnd.bentoml+pickle")]),
    "Content-Type empty": raw_http(headers=[("Content-Type", "")]),
    "Content-Type charset latin-1": raw_http(headers=[("Content-Type", "application/json; charset=latin-1")]),
    "Content-Type garbage bytes": raw_http(headers=[("Content-Type", "\xff\xfe/\x80")]),
    "Authorization 'Bearer  key' (two spaces)": raw_http(headers=[("Authorization", f"Bearer  {PLAIN_KEY}")]),
    "Authorization 'bearer key'": raw_http(headers=[("Authorization", f"bearer {PLAIN_KEY}")]),
    "Authorization 'BEARER key'": raw_http(headers=[("Authorization", f"BEARER {PLAIN_KEY}")]),
    "Authorization 'Bearer'": raw_http(headers=[("Authorization", "Bearer")]),
    "Authorization 'Bearer key extra'": raw_http(headers=[("Authorization", f"Bearer {PLAIN_KEY} extra")]),
    "Authorization Basic": raw_http(headers=[("Authorization", "Basic cGxhaW46a2V5")]),
    "Authorization Bearer with NUL": raw_http(headers=[("Authorization", "Bearer \x00")]),
    "Authorization Bearer with high bytes": raw_http(headers=[("Authorization", "Bearer \xff\xfe\xfd")]),
    "Authorization 4 KB": raw_http(headers=[("Authorization", "Bearer " + "k" * 4096)]),
    "two Authorization headers": raw_http(headers=[("Authorization", "Bearer wrong"),
                                                   ("Authorization", f"Bearer {PLAIN_KEY}")]),
    "wrong Bearer, right X-API-Key": raw_http(headers=[("Authorization", "Bearer wrong"), ("X-API-Key", PLAIN_KEY)]),
    "key in the query string": raw_http(path=f"/classify?api_key={PLAIN_KEY}", headers=[("X-Nothing", "1")]).replace(
        f"Authorization: Bearer {PLAIN_KEY}\r\n".encode(), b""),
    "hash of the key as the key": raw_http(headers=[("X-API-Key", "sha256:" + "0" * 64)]),
    "header of 64 KB": raw_http(headers=[("X-Big", "x" * 65536)]),
    "header without a colon": raw_http(headers=[("Broken header line", "")]).replace(b"Broken header line: ",
                                                                                     b"Broken header line"),
    "GET on the route": raw_http(method="GET", body=b""),
    "PUT on the route": raw_http(method="PUT"),
    "unknown method": raw_http(method="FROB"),
    "trailing slash": raw_http(path="/classify/"),
    "double slash": raw_http(path="//classify"),
    "encoded NUL in path": raw_http(path="/classify%00"),
    "HTTP/1.0 without Host": b"POST /classify HTTP/1.0\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                             + PLAIN_KEY.encode() + b"\r\nContent-Length: 26\r\n\r\n" + b'{"texts": ["profit rose"]}',
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "request line only": b"POST /classify HTTP/1.1\r\n\r\n",
}


def legal_request_is_served(server) -> None:
    response = httpx.post(server.url + "/classify", json={"texts": ["profit rose"]}, timeout=10,
                          headers={"Authorization": f"Bearer {PLAIN_KEY}"})
    assert response.status_code == 200 and response.json()[0]["label"], response.text


def probe_all(server, probes: dict[str, bytes], wrap: bool) -> dict[str, int | None]:
    results = {}
    for name, payload in probes.items():
        results[name] = exchange(server.port, raw_http(payload) if wrap else payload)
        legal_request_is_served(server)
    return results


def test_malformed_json_is_never_a_500(server):
    results = probe_all(server, JSON_PROBES, wrap=True)
    print("\n" + "\n".join(f"{status}  {name}" for name, status in results.items()))
    assert all(status is not None and 400 <= status < 500 for status in results.values()), results
    assert results["5000-digit int"] == 400 and results["NaN"] == 400 and results["duplicate keys"] == 400
    assert results["arrays 100k deep"] == 400 and results["objects 100k deep"] == 400
    assert probe_all(server, SERVED, wrap=True) == {"BOM": 200}


def test_header_tricks_are_never_a_500(server):
    results = probe_all(server, HEADER_PROBES, wrap=False)
    print("\n" + "\n".join(f"{status}  {name}" for name, status in results.items()))
    assert not [name for name, status in results.items() if status is not None and status >= 500], results
    for name in ("Authorization 'Bearer  key' (two spaces)", "Authorization 'bearer key'", "no Content-Type",
                 "Authorization 'BEARER key'", "Content-Length shorter than body"):
        assert results[name] == 200, name
    for name in ("Authorization 'Bearer'", "Authorization 'Bearer key extra'", "Authorization Basic",
                 "key in the query string", "hash of the key as the key", "wrong Bearer, right X-API-Key"):
        assert results[name] == 401, name
    for name in ("Content-Type text/plain", "Content-Type form", "Content-Type multipart", "Content-Type pickle"):
        assert results[name] == 415, name
    assert results["Content-Length huge"] in (400, 413)
    assert results["two Authorization headers"] == 401    # ambiguous: which one did a proxy check?


def test_oversize_bodies_get_413_and_the_server_keeps_serving(server):
    big = b'{"texts": ["' + b"a" * (3 * BODY_CAP) + b'"]}'

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    headers = {"Authorization": f"Bearer {PLAIN_KEY}", "Content-Type": "application/json"}
    for content in (big, chunks()):
        started = time.perf_counter()
        response = httpx.post(server.url + "/classify", content=content, headers=headers, timeout=10)
        assert response.status_code == 413 and time.perf_counter() - started < 3
    legal_request_is_served(server)


def test_slow_clients_are_cut_off_and_do_not_block_others(server):
    body = json.dumps({"texts": ["profit rose"]}).encode()
    raw = raw_http(body)
    head = len(raw) - len(body)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        trickles = [pool.submit(exchange, server.port, raw, 15, head, 0.5) for _ in range(3)]   # 1 byte / 0.5 s
        stalled = [pool.submit(exchange, server.port, raw[:head + 3], 15) for _ in range(3)]    # body never ends
        slowloris = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slowloris.sendall(raw[:40])                                                             # headers never end
        time.sleep(0.5)
        for _ in range(5):
            legal_request_is_served(server)        # others are served meanwhile
        statuses = [f.result() for f in trickles + stalled]
        slowloris.close()
    took = time.perf_counter() - started
    print(f"\nslow clients: {statuses} after {took:.1f} s")
    assert statuses == [408] * 6 and took < TIMEOUT_S + 5
    legal_request_is_served(server)


def test_after_the_probes_no_500_was_counted_and_the_server_is_alive(server):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    statuses = {dict(k)["status"]: v for k, v in metric_samples(text, "toolchain_requests_total").items()}
    print("\ntoolchain_requests_total by status:", statuses)
    assert not {s for s, v in statuses.items() if s.startswith("5") and v}, statuses
    assert server.process.poll() is None
    legal_request_is_served(server)

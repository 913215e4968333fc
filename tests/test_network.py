"""Bundles over the network: a real nginx, Python's http.server (no Range), and a fault server.

Every model opened from a URL is compared with the same bundle opened from disk.
The fault server below serves the bundle from memory, counts the requests and
bytes it served per file, and misbehaves on request: it cuts a connection
mid-file, sends a wrong Content-Length, answers 500 once, ignores Range, serves
a tampered or a longer file, or trickles a byte at a time.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from pwl.errors import CheckpointError, ConfigError
from pwl.runtime import ProgressiveModel, load_bundle_hybrid, read_manifest, verify
from tests.conftest import compose_cfg, export_tiny, run_module

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)),
                                      None)
# Fast enough to keep the test short, slow enough that loading spans several predictions.
THROTTLE = "2m"
X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A directory holding ``bundle/``, and that bundle opened from disk."""
    root = tmp_path_factory.mktemp("site")
    torch.manual_seed(0)
    export_tiny(root / "bundle")
    local, _ = load_bundle_hybrid(root / "bundle")
    return root, local


@contextmanager
def running_nginx(run: Path, port: int, server: str):
    """nginx as the current user, with ``server`` as its one server block, until the end."""
    if NGINX is None:
        pytest.skip("nginx is not installed (make install adds nginx-light where apt is usable)")
    temp = "\n".join(f"  {kind}_temp_path {run / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (run / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {run / 'nginx.pid'};
error_log {run / 'error.log'} warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  default_type application/octet-stream;
  server {{
{server}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(run / "nginx.conf"), "-p", str(run),
                             "-e", str(run / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def nginx(site, tmp_path_factory):
    """nginx on a free port: ``/`` at full speed, ``/slow/`` throttled (``limit_rate``)."""
    root, _ = site
    port = free_port()
    with running_nginx(tmp_path_factory.mktemp("nginx"), port, f"""
    listen 127.0.0.1:{port};
    root {root};
    location /slow/ {{ alias {root}/; limit_rate {THROTTLE}; }}"""):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def nginx_tls(site, tmp_path_factory):
    """nginx over https with a self-signed certificate for 127.0.0.1; the URL and the cert."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test's certificate)")
    root, _ = site
    run = tmp_path_factory.mktemp("nginx-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(run / "key.pem"), "-out", str(run / "cert.pem")],
                   check=True, capture_output=True)
    port = free_port()
    with running_nginx(run, port, f"""
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {run / 'cert.pem'};
    ssl_certificate_key {run / 'key.pem'};
    root {root};"""):
        yield f"https://127.0.0.1:{port}", run / "cert.pem"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def plain_http(site):
    """Python's http.server on the site: it answers every request whole (no Range)."""
    root, _ = site
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- the fault server ----------------------------------------------------------------------


@dataclass
class Served:
    """One response: the file, the first byte asked for (Range), the status, bytes sent."""

    rel: str
    start: int
    status: int
    sent: int


@dataclass
class FaultServer:
    files: dict[str, bytes]
    faults: dict[str, list[str]] = field(default_factory=dict)
    log: list[Served] = field(default_factory=list)
    url: str = ""
    in_flight: int = 0  # responses being sent now, and the most at once
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self, rel: str) -> list[Served]:
        return [s for s in self.log if s.rel == rel]

    def requests(self) -> int:
        return len(self.log)


def _handler(state: FaultServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            with state.lock:
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                self.respond()
            finally:
                with state.lock:
                    state.in_flight -= 1

        def respond(self) -> None:
            rel = self.path.split("/bundle/", 1)[-1]
            fault = state.faults.get(rel, [None]).pop(0) if state.faults.get(rel) else None
            data = state.files.get(rel)
            if data is None or fault == "404":
                self.send_error(404)
                return state.log.append(Served(rel, 0, 404, 0))
            if fault in ("500", "403"):
                self.send_error(int(fault))
                return state.log.append(Served(rel, 0, int(fault), 0))
            if fault in ("redirect_ftp", "redirect_loop"):
                self.send_response(302)
                self.send_header("Location", f"ftp://127.0.0.1/{rel}" if fault == "redirect_ftp"
                                 else self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if fault == "redirect_loop":
                    state.faults[rel] = ["redirect_loop"]
                return state.log.append(Served(rel, 0, 302, 0))
            if fault == "tamper":
                data = bytearray(data)
                data[len(data) // 2] ^= 0xFF
                data = bytes(data)
            if fault == "longer":
                data = data + b"\0" * 4096
            start = 0
            asked = self.headers.get("Range", "")
            if asked.startswith("bytes=") and fault != "norange":
                start = int(asked[6:].split("-")[0])
            body = data[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            length = {"short_length": len(body) // 2, "long_length": len(body) + 1000}
            self.send_header("Content-Length", str(length.get(fault, len(body))))
            self.end_headers()
            sent = 0
            try:
                if fault == "slow":
                    time.sleep(0.3)  # a response that takes a while, overlapping the next ones
                if fault == "cut":
                    sent = len(body) // 2
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    time.sleep(0.5)  # the client reads what came before the cut
                elif fault == "trickle":
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        sent += 1
                        time.sleep(0.5)
                else:
                    body = body[:length.get(fault, len(body))]
                    self.wfile.write(body)
                    sent = len(body)
            except OSError:
                pass  # the client hung up
            state.log.append(Served(rel, start, 206 if start else 200, sent))
            self.close_connection = True

    return Handler


@pytest.fixture
def fault_server(site):
    """A fresh fault server for the site's bundle (``state.faults[rel]``: one fault per
    request for that file, in order)."""
    root, _ = site
    bundle = root / "bundle"
    files = {p.relative_to(bundle).as_posix(): p.read_bytes()
             for p in bundle.rglob("*") if p.is_file()}
    state = FaultServer(files)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/bundle/"
    yield state
    server.shutdown()
    server.server_close()


def open_url(url: str, **kwargs) -> ProgressiveModel:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("retries", 2)
    return ProgressiveModel.open(url, **kwargs)


def load_all(url: str, **kwargs) -> ProgressiveModel:
    """The model of ``url`` once loading has ended (done or failed)."""
    model = open_url(url, **kwargs)
    model.start_loading()
    end = time.monotonic() + 30
    while not model.done and time.monotonic() < end:
        time.sleep(0.01)
    return model


# --- a real server -------------------------------------------------------------------------


def test_nginx_answers_equal_a_local_open_at_every_stage(site, nginx):
    root, local = site
    hybrid, _ = load_bundle_hybrid(f"{nginx}/bundle/")
    masks = read_manifest(root / "bundle").loading_order
    for mask in masks:
        assert torch.equal(hybrid(X, mask), local(X, mask)), mask
    with open_url(f"{nginx}/slow/bundle/") as model:
        seen = {}
        model.start_loading()
        while not model.done:
            logits, mask = model.predict_with_mask(X)
            seen.setdefault(mask, logits)
        model.wait()
        seen.setdefault(model.mask, model.predict(X))
    assert len(seen) >= 3 and seen.keys() <= set(masks)  # answered while blocks arrived
    for mask, logits in seen.items():
        assert torch.equal(logits, local(X, mask)), mask
    assert model.mask == masks[-1] and model.error is None
    assert verify(f"{nginx}/bundle/").num_blocks == len(masks) - 1


def test_several_connections_read_ahead_and_still_swap_in_order(site, nginx, fault_server):
    root, local = site
    model = load_all(f"{nginx}/slow/bundle/", connections=3)
    masks = read_manifest(root / "bundle").loading_order
    assert model.error is None and [e.mask for e in model.events] == masks
    assert torch.equal(model.predict(X), local(X, masks[-1]))
    # a bad shard read ahead still ends the load at the last good mask, when its turn comes
    fault_server.faults["teacher/block_2.safetensors"] = ["tamper"]
    model = load_all(fault_server.url, connections=4)
    assert model.mask == "TTSS" and "sha256" in model.events[-1].error
    assert torch.equal(model.predict(X), local(X, "TTSS"))
    with pytest.raises(ConfigError, match="connections=0"):
        open_url(fault_server.url, connections=0)


def test_https_is_verified_against_the_system_or_the_given_authorities(site, nginx_tls):
    _, local = site
    url, cert = nginx_tls
    with pytest.raises(CheckpointError, match="ca_bundle="):
        ProgressiveModel.open(f"{url}/bundle/", retries=0, timeout=5)
    model = load_all(f"{url}/bundle/", ca_bundle=cert)
    assert model.error is None and torch.equal(model.predict(X), local(X, "TTTT"))


def test_a_server_that_ignores_range_serves_whole_files(site, plain_http):
    _, local = site
    model = load_all(f"{plain_http}/bundle/")
    assert model.error is None and torch.equal(model.predict(X), local(X, model.mask))


# --- faults --------------------------------------------------------------------------------

BIG = "teacher/block_3.safetensors"  # the largest shard


def test_a_cut_connection_resumes_from_the_last_byte_received(site, fault_server):
    _, local = site
    fault_server.faults[BIG] = ["cut"]
    model = load_all(fault_server.url)
    assert model.error is None and torch.equal(model.predict(X), local(X, "TTTT"))
    size = len(fault_server.files[BIG])
    first, second = fault_server.served(BIG)
    assert first.start == 0 and first.sent == size // 2
    # Resumed where the received bytes ended, and only the rest was sent again.
    assert 0 < second.start <= first.sent and second.status == 206
    assert second.sent == size - second.start


@pytest.mark.parametrize("faults", [["500"], ["long_length"], ["short_length"],
                                    ["cut", "norange"]])
def test_transient_faults_heal(site, fault_server, faults):
    _, local = site
    fault_server.faults[BIG] = list(faults)
    model = load_all(fault_server.url)
    assert model.error is None and torch.equal(model.predict(X), local(X, "TTTT"))
    served = fault_server.served(BIG)
    # A body longer than its Content-Length says ends in a broken connection: whether that
    # shows before the last byte is read is a race, after which the rest is asked for again.
    assert len(served) == 2 or (faults == ["long_length"] and len(served) == 1)


@pytest.mark.parametrize(("fault", "says"), [("tamper", "sha256"), ("longer", "longer than"),
                                             ("404", "not found (404)"),
                                             ("403", "HTTP 403 Forbidden; the server refuses"),
                                             ("redirect_ftp", "redirect"),
                                             ("redirect_loop", "redirects more than 5 times")])
def test_a_bad_shard_is_refused_and_the_model_keeps_its_last_good_mask(site, fault_server,
                                                                       fault, says):
    _, local = site
    fault_server.faults["teacher/block_2.safetensors"] = [fault]
    model = load_all(fault_server.url)
    error = model.events[-1].error
    assert model.mask == "TTSS" and error is not None and says in error
    assert f"{fault_server.url}teacher/block_2.safetensors" in error and "\n" not in error
    assert torch.equal(model.predict(X), local(X, "TTSS"))
    with pytest.raises(CheckpointError):
        model.wait()


def test_a_trickle_past_the_timeout_ends_in_an_error(fault_server):
    fault_server.faults["teacher/block_0.safetensors"] = ["trickle", "trickle"]
    model = load_all(fault_server.url, timeout=0.3, retries=1)
    assert model.mask == "SSSS" and "no data for 0.3 s" in model.events[-1].error
    assert "gave up after 1 retries" in model.events[-1].error


def test_a_load_past_its_deadline_ends_in_an_error(fault_server):
    fault_server.faults["teacher/block_0.safetensors"] = ["trickle"]
    model = load_all(fault_server.url, deadline=1.0)
    assert model.mask == "SSSS" and "passed its deadline of 1 s" in model.events[-1].error


def test_the_cache_serves_a_second_open_without_shard_requests(site, fault_server, tmp_path):
    _, local = site
    cache = tmp_path / "cache"
    load_all(fault_server.url, cache_dir=cache)
    first = fault_server.requests()
    model = load_all(fault_server.url, cache_dir=cache)
    assert model.error is None and torch.equal(model.predict(X), local(X, "TTTT"))
    assert [s.rel for s in fault_server.log[first:]] == ["manifest.json"]
    # A cached copy that no longer matches its hash is fetched again, and only it.
    stored = next(p for p in cache.rglob("*") if p.is_file()
                  and p.stat().st_size == len(fault_server.files[BIG]))
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    second = fault_server.requests()
    load_all(fault_server.url, cache_dir=cache)
    assert [s.rel for s in fault_server.log[second:]] == ["manifest.json", BIG]


def test_unusable_urls_fail_in_one_line_naming_the_url():
    port = free_port()  # nothing listens there
    for url, says in [(f"http://127.0.0.1:{port}/bundle/", "cannot connect"),
                      ("nope://host/bundle/", "no protocol 'nope'"),
                      ("http:///bundle/", "names no host")]:
        with pytest.raises(CheckpointError) as e:
            ProgressiveModel.open(url, retries=0, timeout=1)
        assert says in str(e.value) and "\n" not in str(e.value), url


# --- the entry points ----------------------------------------------------------------------


def test_serve_streams_a_bundle_from_its_url(nginx, tmp_path):
    out = tmp_path / "serve"
    proc = run_module("pwl.serve", f"bundle={nginx}/bundle/", f"hydra.run.dir={out}",
                      f"cache_dir={tmp_path / 'cache'}", "batch_size=32", "tail_batches=2",
                      "live=false", "monotonicity=false")
    assert proc.returncode == 0, proc.stderr
    events = json.loads((out / "events.json").read_text())
    assert [e["mask"] for e in events] == ["SSSS", "TSSS", "TTSS", "TTTS", "TTTT"]
    assert len(list((tmp_path / "cache").rglob("*/*/*"))) == 6  # the student, adapters, 4 blocks


@pytest.mark.parametrize("connections", [1, 3])
def test_serve_reads_as_many_files_at_once_as_its_connections(fault_server, connections,
                                                              tmp_path):
    from pwl.serve import serve

    for i in range(4):
        fault_server.faults[f"teacher/block_{i}.safetensors"] = ["slow"]
    cfg = compose_cfg("serve", [f"bundle={fault_server.url}", f"connections={connections}",
                                "batch_size=32", "tail_batches=1", "live=false",
                                "monotonicity=false"])
    with patch("pwl.serve.run_dir", return_value=tmp_path):
        serve(cfg)
    assert fault_server.most_in_flight == connections


def test_serve_names_an_unreachable_url_in_one_line(capsys):
    from pwl.cli import user_errors_as_one_line
    from pwl.serve import serve

    url = f"http://127.0.0.1:{free_port()}/bundle/"
    with pytest.raises(SystemExit) as exit_:
        user_errors_as_one_line(serve)(compose_cfg("serve", [f"bundle={url}", "retries=0"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and url in err and len(err.strip().splitlines()) == 1, err


def test_bench_copies_a_url_and_measures_it_beside_the_copy(site, nginx, tmp_path):
    from pwl.bench import bundle_target, run_variant

    root, _ = site
    target = bundle_target(f"{nginx}/bundle/", tmp_path / "whole")
    assert target.variants[-3:] == ["bundle", "bundle_url", "student_url"]
    for rel in ("manifest.json", "teacher/block_3.safetensors"):
        assert (target.bundle / rel).read_bytes() == (root / "bundle" / rel).read_bytes()
    result = run_variant({"variant": "bundle_url", "path": target.url,
                          "model_cfg": target.model_cfg, "bandwidth": None, "full": True})
    assert result["final_mask"] == "TTTT"
    assert result["first_requests"] == 2  # the manifest and the student
    assert result["first_bytes_received"] == (root / "bundle" / "student.safetensors").stat(
        ).st_size + (root / "bundle" / "manifest.json").stat().st_size


def test_evaluate_takes_a_bundle_url(nginx, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from pwl.evaluate import evaluate
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={nginx}/bundle/", "orders=[prefix]",
                                             f"out={tmp_path}", "limit_batches=1"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        result = evaluate(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert result.samples > 0 and (tmp_path / "stages.csv").is_file()


def test_bench_sets_the_url_open_against_the_student_alone_from_the_same_throttled_server(
        site, nginx, tmp_path):
    from pwl.bench import bundle_target, measure_target

    root, _ = site
    target = bundle_target(f"{nginx}/slow/bundle/", tmp_path / "whole")
    rows = measure_target(target, cold=False, link_rate=THROTTLE.replace("m", "MiB"),
                          variants=["bundle", "bundle_url", "student_url"])
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["bundle", "bundle_url", "student_url"]
    student = by["student_url"]
    # the student's file alone: one request, its bytes, and the bundle's first answer
    assert student["first_requests"] == 1 and student["same_logits"]
    assert student["first_bytes_received"] == (root / "bundle" / "student.safetensors").stat(
        ).st_size
    assert student["student_delta_ms"] == 0 and student["link_use"] is None
    url = by["bundle_url"]
    assert url["first_requests"] == 2 and url["same_logits"]
    assert url["student_delta_ms"] == pytest.approx(
        1000 * (url["first_answer_s"] - student["first_answer_s"]))
    # the link is nginx's, the local bundle's the emulation of it: both about full
    for r in (url, by["bundle"]):
        assert r["link_rate"] == 2 * 2**20 and 0.5 < r["link_use"] <= 1.05, r
    # the tiny bundle's manifest has no accuracy for every mask: no curve
    assert url["area_ratio"] is None and url["time_to_teacher_s"] is None

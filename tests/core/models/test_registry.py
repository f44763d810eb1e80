"""Weights through pooch, tested against a real HTTP server on 127.0.0.1 (no outside network)."""

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from napari_cellquant.core.models.card import ModelCard, WeightsSource
from napari_cellquant.core.models.registry import (
    WeightsError,
    resolve_weights,
    weights_status,
)

PAYLOAD = b"not really a state dict, but bytes with a known sha256" * 100


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1 and point the weights cache at tmp_path/cache."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "w.pt").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CELLQUANT_CACHE", str(tmp_path / "cache"))
    yield server, tmp_path / "cache"
    server.shutdown()
    server.server_close()


def _card(url=None, sha256=None, file=None, location=None) -> ModelCard:
    return ModelCard(
        name="tiny",
        kind="learned",
        task="instances",
        class_set="cell",
        architecture={"name": "unet"},
        weights=WeightsSource(file=file, url=url, sha256=sha256),
        location=location,
    )


def test_download_then_cache_hit_without_server(served):
    server, cache = served
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pt"
    card = _card(url, hashlib.sha256(PAYLOAD).hexdigest())
    assert weights_status(card) == "remote"
    path = resolve_weights(card)
    assert path.read_bytes() == PAYLOAD and path.parent == cache
    assert weights_status(card) == "cached"
    server.shutdown()  # a cache hit must not need the server
    assert resolve_weights(card) == path


def test_wrong_hash_is_a_clear_error_and_file_not_used(served):
    server, cache = served
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pt"
    with pytest.raises(WeightsError, match="failed the sha256 check"):
        resolve_weights(_card(url, "0" * 64))
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_server_down_is_a_clear_error(served):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    card = _card(f"http://127.0.0.1:{port}/w.pt", hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(WeightsError, match="could not download weights"):
        resolve_weights(card)


def test_learned_model_without_weights_says_so():
    card = _card()
    assert weights_status(card) == "missing"
    with pytest.raises(WeightsError, match="has no trained weights yet"):
        resolve_weights(card)


def test_local_weights_with_wrong_hash_are_refused(tmp_path):
    (tmp_path / "w.pt").write_bytes(PAYLOAD)
    card = _card(file="w.pt", sha256="f" * 64, location=tmp_path)
    assert weights_status(card) == "local"
    with pytest.raises(WeightsError, match="the file was not used"):
        resolve_weights(card)
    good = _card(file="w.pt", sha256=hashlib.sha256(PAYLOAD).hexdigest(), location=tmp_path)
    assert resolve_weights(good) == tmp_path / "w.pt"


def test_card_round_trip_and_bad_cards(tmp_path):
    card = _card(url="http://127.0.0.1:1/w.pt", sha256="a" * 64)
    card.save(tmp_path / "tiny.json")
    again = ModelCard.load(tmp_path / "tiny.json")
    assert again.to_dict() == card.to_dict()
    (tmp_path / "bad.json").write_text('{"name": "x", "kind": "learned"}')
    with pytest.raises(Exception, match="lacks task, class_set"):
        ModelCard.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(
        '{"name": "x", "kind": "learned", "task": "instances", "class_set": "blood99"}'
    )
    with pytest.raises(Exception, match="unknown class set 'blood99'"):
        ModelCard.load(tmp_path / "other.json")

import pytest

from tray.settings.hosts import parse_ollama_host


@pytest.mark.parametrize(
    "value, url, bind",
    [
        (None, "http://127.0.0.1:11434", "127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434", "127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434", "1.2.3.4:11434"),
        (":1234", "http://127.0.0.1:1234", ":1234"),
        ("example.com", "http://example.com:11434", "example.com:11434"),
        ("[::1]", "http://[::1]:11434", "[::1]:11434"),
        ("::1", "http://[::1]:11434", "[::1]:11434"),
        ("http://1.2.3.4", "http://1.2.3.4:80", "1.2.3.4:80"),
        ("https://1.2.3.4", "https://1.2.3.4:443", "1.2.3.4:443"),
        ("https://example.com/ollama", "https://example.com:443/ollama", "example.com:443"),
        ("ollama.com", "https://ollama.com:443", "ollama.com:443"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434", "0.0.0.0:11434"),
        ("[::]:8080", "http://[::1]:8080", "[::]:8080"),
        ('  "127.0.0.1:5000"  ', "http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("127.0.0.1:99999", "http://127.0.0.1:11434", "127.0.0.1:11434"),
        ("localhost:abc", "http://localhost:11434", "localhost:11434"),
    ],
)
def test_parsed_like_ollama(value, url, bind):
    host = parse_ollama_host(value)
    assert host.url == url
    assert host.bind_value == bind


def test_loopback_detection():
    assert parse_ollama_host("127.0.0.1:5").is_loopback
    assert parse_ollama_host("localhost:5").is_loopback
    assert parse_ollama_host(":5").is_loopback  # all interfaces, dialled on loopback
    assert not parse_ollama_host("10.1.2.3:5").is_loopback

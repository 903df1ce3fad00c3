import hashlib

import pytest

from agent.download import DownloadError, download


def test_resume_with_range(bundle_server, bundles, tmp_path) -> None:
    src = bundles["v1"]
    data = src.read_bytes()
    dest = tmp_path / "b.bundle"
    (tmp_path / "b.bundle.part").write_bytes(data[:1000])  # an interrupted earlier download
    sha = hashlib.sha256(data).hexdigest()
    download(f"{bundle_server.url}/{src.name}", dest, expected_size=len(data), expected_sha256=sha,
             max_bytes=10**8)
    assert dest.read_bytes() == data and bundle_server.ranges == ["bytes=1000-"]
    assert not (tmp_path / "b.bundle.part").exists()


def test_size_limit_and_digest(bundle_server, bundles, tmp_path) -> None:
    src = bundles["v1"]
    url = f"{bundle_server.url}/{src.name}"
    with pytest.raises(DownloadError, match="limit"):
        download(url, tmp_path / "a", expected_size=src.stat().st_size, expected_sha256=None, max_bytes=100)
    with pytest.raises(DownloadError, match="exceeds"):
        download(url, tmp_path / "b", expected_size=None, expected_sha256=None, max_bytes=100)
    with pytest.raises(DownloadError, match="SHA-256"):
        download(url, tmp_path / "c", expected_size=src.stat().st_size, expected_sha256="0" * 64, max_bytes=10**8)
    with pytest.raises(DownloadError, match="cannot download"):
        download(f"{bundle_server.url}/missing", tmp_path / "d", expected_size=None, expected_sha256=None,
                 max_bytes=10**8, attempts=1)

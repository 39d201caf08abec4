"""Secrets: where role passwords come from, files only their owner can read, SCRAM verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from streams.secrets import Role, password, scram_verifier
from streams.settings import Settings, SettingsError


def settings(home: Path) -> Settings:
    return Settings.from_env({"OFISYNC_HOME": str(home)})


def test_a_generated_password_is_kept_in_an_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OFISYNC_ERP_SINK_PASSWORD", raising=False)
    s = settings(tmp_path)
    with pytest.raises(SettingsError, match="ofisync up"):
        password(s, "erp", Role.SINK)
    first = password(s, "erp", Role.SINK, create=True)
    assert password(s, "erp", Role.SINK) == first and len(first) >= 24
    path = tmp_path / "secrets" / "erp-sink.password"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        password(s, "erp", Role.SINK)


def test_the_environment_and_a_named_file_come_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(tmp_path)
    monkeypatch.setenv("OFISYNC_CRM_CAPTURE_PASSWORD", "from-env")
    assert password(s, "crm", Role.CAPTURE) == "from-env"
    monkeypatch.delenv("OFISYNC_CRM_CAPTURE_PASSWORD")
    named = tmp_path / "capture.pw"
    named.write_text("from-file\n")
    named.chmod(0o600)
    monkeypatch.setenv("OFISYNC_CRM_CAPTURE_PASSWORD_FILE", str(named))
    assert password(s, "crm", Role.CAPTURE) == "from-file"


def test_the_scram_verifier_is_what_postgresql_computes() -> None:
    salt = b"0123456789abcdef"
    verifier = scram_verifier("pencil", salt)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt64 = iterations_salt.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, int(iterations))
    assert method == "SCRAM-SHA-256" and base64.b64decode(salt64) == salt
    assert stored == hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    assert server == hmac.digest(salted, b"Server Key", "sha256")
    assert "pencil" not in verifier

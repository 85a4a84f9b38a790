"""``ksocket encrypt`` / ``ksocket decrypt`` (manual 6.4.2): round trip, modes, wrong keys, the loader."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import pytest

from ksocket import paths
from ksocket.credentials import crypto, explain, find, load
from ksocket.errors import CredentialError, DecryptionError
from tests.conftest import run_ksocket, write_private

PASSWORD = "Crypt0-Pa55word"
PLAIN = (
    "# the office network\n"
    'includes = ["198.18.0.0/15", "2001:db8::/32"]\n'
    f'[account]\nusername = "john"\npassword = "{PASSWORD}"\n'
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "credentials" / "ssh" / "10-office.toml"
    path.parent.mkdir(parents=True)
    path.write_text(PLAIN, encoding="utf-8")
    path.chmod(0o644)
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "credentials.key"


def test_round_trip_and_modes(plain: Path, key: Path) -> None:
    crypto.encrypt_file(plain, key_path=key)
    encrypted = plain.read_text(encoding="utf-8")
    assert encrypted.startswith(crypto.MAGIC + "\n")
    assert PASSWORD not in encrypted and "198.18" not in encrypted
    assert mode(plain) == 0o600
    assert mode(key) == 0o600
    assert mode(key.parent) == 0o700
    assert crypto.read_text(plain, key_path=key) == PLAIN
    crypto.decrypt_file(plain, key_path=key)
    assert plain.read_text(encoding="utf-8") == PLAIN
    assert mode(plain) == 0o600


def test_the_key_lives_in_etc_and_is_made_once(home: Path, plain: Path, tmp_path: Path) -> None:
    assert crypto.default_key_path() == paths.etc_dir() / "credentials.key" == home / "etc/ksocket/credentials.key"
    crypto.encrypt_file(plain)
    key = home / "etc" / "ksocket" / "credentials.key"
    assert mode(key) == 0o600
    assert mode(key.parent) == 0o700
    first = key.read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text("includes: [198.18.0.1]\naccount: {username: x}\n", encoding="utf-8")
    crypto.encrypt_file(other)
    assert key.read_bytes() == first
    assert [p.name for p in key.parent.iterdir()] == ["credentials.key"], "no temporary file is left behind"
    assert crypto.read_text(other).startswith("includes:")
    assert crypto.read_text(plain) == PLAIN


def test_a_wrong_key_is_a_decryption_error(plain: Path, key: Path, tmp_path: Path) -> None:
    crypto.encrypt_file(plain, key_path=key)
    other_key = tmp_path / "other.key"
    crypto.load_key(other_key, create=True)
    with pytest.raises(DecryptionError) as caught:
        crypto.read_text(plain, key_path=other_key)
    assert str(caught.value) == f"cannot decrypt {plain}: wrong key or the file was altered"
    before = plain.read_bytes()
    with pytest.raises(DecryptionError, match="wrong key or the file was altered"):
        crypto.decrypt_file(plain, key_path=other_key)
    assert plain.read_bytes() == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "append"])
def test_a_tampered_file_is_a_decryption_error(plain: Path, key: Path, damage: str) -> None:
    crypto.encrypt_file(plain, key_path=key)
    magic, token = plain.read_text(encoding="utf-8").split("\n")[:2]
    middle = len(token) // 2
    changed = {
        "flip": token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :],
        "truncate": token[:middle],
        "empty": "",
        "append": token + "AAAA",
    }[damage]
    plain.write_text(f"{magic}\n{changed}\n", encoding="utf-8")
    with pytest.raises(DecryptionError) as caught:
        crypto.read_text(plain, key_path=key)
    assert str(caught.value) == f"cannot decrypt {plain}: wrong key or the file was altered"


def test_no_key_is_a_decryption_error_and_no_key_is_made(plain: Path, key: Path, tmp_path: Path) -> None:
    crypto.encrypt_file(plain, key_path=key)
    missing = tmp_path / "missing.key"
    with pytest.raises(
        DecryptionError, match=re.escape(f"cannot decrypt {plain}: there is no credentials key {missing}")
    ):
        crypto.decrypt_file(plain, key_path=missing)
    assert not missing.exists()


def test_a_bad_key_file_is_named(plain: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n", encoding="utf-8")
    with pytest.raises(CredentialError, match=re.escape(f"{bad}: not a credentials key")):
        crypto.encrypt_file(plain, key_path=bad)
    assert plain.read_text(encoding="utf-8") == PLAIN


def test_an_unknown_format_is_refused(plain: Path, key: Path) -> None:
    crypto.load_key(key, create=True)
    write_private(plain, "#ksocket-encrypted:v9\nabc\n")
    with pytest.raises(DecryptionError, match="unknown format '#ksocket-encrypted:v9'"):
        crypto.read_text(plain, key_path=key)


def test_encrypting_twice_and_decrypting_plain_text_are_errors(plain: Path, key: Path) -> None:
    with pytest.raises(CredentialError, match=re.escape(f"{plain}: not encrypted")):
        crypto.decrypt_file(plain, key_path=key)
    assert plain.read_text(encoding="utf-8") == PLAIN
    crypto.encrypt_file(plain, key_path=key)
    once = plain.read_bytes()
    with pytest.raises(CredentialError, match=re.escape(f"{plain}: already encrypted")):
        crypto.encrypt_file(plain, key_path=key)
    assert plain.read_bytes() == once


def test_a_file_that_is_not_utf8_is_not_encrypted(plain: Path, key: Path) -> None:
    plain.write_bytes(b"includes = ['\xff']\n")
    with pytest.raises(CredentialError, match="not UTF-8"):
        crypto.encrypt_file(plain, key_path=key)
    assert plain.read_bytes() == b"includes = ['\xff']\n"
    assert not key.exists()


def test_an_encrypted_file_is_found_and_read_by_the_search(
    home: Path, plain: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = plain.parent.parent
    yaml_file = plain.parent / "20-lab.yaml"
    yaml_file.write_text(
        "includes: [198.18.0.0/24]\naccount: {username: lab, password: lab-Pa55word}\n", encoding="utf-8"
    )
    crypto.encrypt_file(plain)
    crypto.encrypt_file(yaml_file)
    caplog.set_level(logging.DEBUG)
    found = find("ssh", "198.18.0.5", root)
    assert [(c.path, c.account.username) for c in found] == [(plain, "john"), (yaml_file, "lab")]
    assert found[0].account.password == PASSWORD
    assert load("ssh", yaml_file).account.password == "lab-Pa55word"
    assert PASSWORD not in caplog.text and "lab-Pa55word" not in caplog.text
    assert PASSWORD not in repr(found)


def test_an_encrypted_file_with_the_wrong_key_is_skipped_by_the_search(home: Path, plain: Path, key: Path) -> None:
    crypto.encrypt_file(plain, key_path=key)  # not the installation's key
    crypto.load_key(create=True)
    good = plain.parent / "20-good.toml"
    write_private(good, PLAIN)
    considered = explain("ssh", "198.18.0.5", plain.parent.parent)
    assert [(c.path, c.verdict) for c in considered] == [(plain, "skipped"), (good, "match")]
    assert considered[0].reason == "invalid: cannot decrypt " + str(plain) + ": wrong key or the file was altered"


def test_the_command_line(home: Path, plain: Path) -> None:
    env = {"KSOCKET_HOME": str(home)}
    done = run_ksocket("encrypt", str(plain), env=env)
    assert done.returncode == 0, done.stderr
    assert plain.read_text(encoding="utf-8").startswith(crypto.MAGIC)
    again = run_ksocket("encrypt", str(plain), env=env)
    assert again.returncode == 1 and "already encrypted" in again.stderr
    done = run_ksocket("decrypt", str(plain), env=env)
    assert done.returncode == 0, done.stderr
    assert plain.read_text(encoding="utf-8") == PLAIN


def test_an_encrypted_file_open_to_others_is_refused_too(plain: Path, key: Path) -> None:
    crypto.encrypt_file(plain, key_path=key)
    plain.chmod(0o644)
    with pytest.raises(CredentialError, match=re.escape(f"(mode 0644): run chmod 600 {plain}")):
        crypto.read_text(plain, key_path=key)
    crypto.decrypt_file(plain, key_path=key)  # what ksocket writes is 0600 again
    assert mode(plain) == 0o600 and crypto.read_text(plain) == PLAIN

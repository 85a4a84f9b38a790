"""``ksocket encrypt FILE`` and ``ksocket decrypt FILE``: a credential file encrypted or decrypted in place."""

from __future__ import annotations

import argparse
from pathlib import Path

from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path)
    parser.set_defaults(handler=encrypt)


def configure_decrypt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path)
    parser.set_defaults(handler=decrypt)


def encrypt(args: argparse.Namespace) -> int:
    from ksocket.credentials import crypto

    load_settings(args)
    crypto.encrypt_file(args.file)
    return 0


def decrypt(args: argparse.Namespace) -> int:
    from ksocket.credentials import crypto

    load_settings(args)
    crypto.decrypt_file(args.file)
    return 0

"""CurveZMQ for zmqmr's sockets: key files, who may connect, and failing closed.

With CURVE on, the driver is a CURVE server whose ZAP handler (on the driver's own context)
admits only the public keys in --authorized-keys; a worker is a CURVE client that knows the
driver's public key, so it talks to no impostor. Each worker's shuffle service is a CURVE
server with the worker's own key pair, admitting the keys the driver authorized (sent in
`welcome`), and task processes connect with their worker's keys. ZAP_ENFORCE_DOMAIN makes
libzmq refuse every handshake if the handler is not running, instead of admitting it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import threading
from dataclasses import dataclass, field
from typing import FrozenSet, Iterable, Optional, Set

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import UsageError

ZAP_DOMAIN = "zmqmr"
KEY_LEN = 40  # a z85 CURVE key


@dataclass(frozen=True)
class CurveKeys:
    """A key pair (z85), and for a client the server's public key."""

    public: bytes
    secret: bytes
    server: bytes = b""


@dataclass
class Curve:
    """The CURVE settings of one process: its keys, and for a server the keys it admits."""

    keys: CurveKeys
    authorized: Set[bytes] = field(default_factory=set)


# --- key files -----------------------------------------------------------------------------


def generate(directory: str, name: str) -> tuple:
    """Write DIRECTORY/NAME.key (public) and NAME.key_secret (mode 0600, created so); never overwrite."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"{name!r} is not a key name (a plain file name, such as the host's name)")
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.curve_keypair()
    base = os.path.join(directory, name)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    _write_new(base + ".key_secret", 0o600, _zcert(stamp, "Secret", public, secret))
    try:
        _write_new(base + ".key", 0o644, _zcert(stamp, "Public", public, None))
    except BaseException:
        os.unlink(base + ".key_secret")
        raise
    return base + ".key", base + ".key_secret"


def _zcert(stamp: str, kind: str, public: bytes, secret: Optional[bytes]) -> str:
    lines = [f"#   zmqmr CURVE {kind} Certificate, made {stamp}"]
    if secret is not None:
        lines.append("#   Keep this file secret: whoever has it can act as this host.")
    lines += ["", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: str, mode: int, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists; zmqmr-keygen never overwrites a key") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _loose(path: str, st: os.stat_result, what: str, bits: int) -> None:
    if st.st_mode & bits:
        raise UsageError(f"{what} {path} is {'readable' if bits & 0o044 else 'writable'} by others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod {'600' if bits & 0o044 else 'go-w'} "
                         f"{path}")


def load_secret(path: str) -> CurveKeys:
    """The key pair in a secret key file, refused if others may read (or change) it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read the secret key {path}: {exc.strerror}") from None
    public, secret = _load(path, "secret key")
    if not secret:
        raise UsageError(f"{path} holds no secret key (is it the .key file? the secret one ends in .key_secret)")
    _loose(path, st, "the secret key", 0o077)
    return CurveKeys(public, secret)


def load_public(path: str) -> bytes:
    """The public key in a key file (the driver's, for a worker or a status client)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror}") from None
    _loose(path, st, "the key file", 0o022)
    return _load(path, "key")[0]


def _load(path: str, what: str) -> tuple:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc}") from None
    if not public or len(public) != KEY_LEN or (secret and len(secret) != KEY_LEN):
        raise UsageError(f"{path} is not a zmqmr key file (make one with zmqmr-keygen)")
    return public, secret


def load_authorized(directory: str) -> Set[bytes]:
    """The public keys in DIRECTORY/*.key: the workers (and status clients) the driver admits.
    Refused if others may write the directory or a key in it: they could add themselves."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise UsageError(f"cannot read --authorized-keys {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--authorized-keys {directory} is not a directory")
    _loose(directory, st, "the directory", 0o022)
    keys = set()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".key"):
            keys.add(load_public(os.path.join(directory, name)))
    if not keys:
        raise UsageError(f"--authorized-keys {directory} holds no public key (*.key): nobody could connect")
    return keys


# --- sockets -------------------------------------------------------------------------------


def serve(sock: zmq.Socket, curve: Optional[Curve]) -> None:
    """Make `sock` a CURVE server that only a running ZAP handler can open (fails closed)."""
    if curve is None:
        return
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_server = True


def connect_as(sock: zmq.Socket, keys: Optional[CurveKeys], server_key: bytes = b"") -> None:
    """Make `sock` a CURVE client of the server with this public key (nothing without keys)."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_key or keys.server


class Gate:
    """The ZAP handler of a context: admits CURVE clients whose public key is in `allowed`, which may
    grow while it runs (a worker learns the authorized keys from the driver)."""

    def __init__(self, context: zmq.Context, allowed: Iterable[bytes] = ()):
        self.allowed: FrozenSet[bytes] = frozenset(allowed)
        self.refused = 0
        self._lock = threading.Lock()
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    def allow(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self.allowed = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.refused += 1
        return ok

    def stop(self) -> None:
        self.auth.stop()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this host only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(what: str, where: str) -> str:
    return (f"{what} listens on {where} without authentication (--insecure): anyone who can reach it can join "
            "the job, read its code and data, and change its output. Use --curve-secret on a network you do not "
            "trust.")

"""Passwords, API tokens, sessions and CSRF."""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.db import lock_keys
from sheetbridge.insurance.models import ROLES, USERNAME, User, is_device_name
from sheetbridge.web.models import ApiToken, SignInFailure, WebSession

MAX_PASSWORD = 200  # longer is no password anyone types; refused unhashed

TOKEN_PREFIX = "sb_"
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user could not be created or found, with the reason."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    # Made on the first failed sign-in, not at import: hashing takes about
    # 100 ms, which every process (and every CLI command) would pay at start.
    return hash_password("not-a-real-password")


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        verify_password(_dummy_hash(), password)  # same cost, user or not
        return None
    return user if verify_password(user.password_hash, password) else None


@dataclass(frozen=True)
class SignInLimits:
    """How many wrong sign-ins, within ``window_s``, hold off further tries:
    ``per_user`` for one user from one address (whose other addresses, and
    other users, are not held off by them), ``per_address`` for any users
    from one address."""

    per_user: int
    per_address: int
    window_s: int


@dataclass(frozen=True)
class HeldOff:
    """Sign-ins refused unchecked for ``seconds`` more: ``username``'s from
    this address, or (``username`` None) every one from this address.
    ``busy``: for tries sent at the same time, still being checked."""

    seconds: int
    username: str | None
    busy: bool = False

    def message(self) -> str:
        if self.busy:
            whose = (
                "from this address" if self.username is None else f"for {self.username}"
            )
            return (
                f"Several sign-ins {whose} are being checked at once: try again "
                "in a few seconds."
            )
        what = (
            "wrong sign-ins from this address"
            if self.username is None
            else f"wrong passwords for {self.username}"
        )
        minutes = math.ceil(self.seconds / 60)
        return f"Too many {what}: try again in {minutes} minute{'s' * (minutes != 1)}."


# How long a try counts as being checked (a password takes a fraction of a
# second); one older was cut off, its process stopped. And how long tries
# sent beside that many wait.
CHECKING_S = 60
BUSY_RETRY_S = 5


def sign_in_name(username: str) -> str:
    """A user name as wrong sign-ins are counted by: spaces and case aside."""
    return username.strip().casefold()[:64]


def count_sign_in(
    session: Session, username: str, address: str, limits: SignInLimits
) -> int:
    """Count a sign-in before its password is checked, so that tries sent at
    once are counted as tries sent one after another; the row's ID. A wrong
    password marks it checked (:func:`checked_wrong`); a right one, or a try
    held off unchecked, takes it back. Wrong ones older than the window are
    forgotten."""
    now = clock.now()
    session.execute(
        delete(SignInFailure).where(
            SignInFailure.failed_at <= now - timedelta(seconds=limits.window_s)
        )
    )
    attempt = SignInFailure(
        username=sign_in_name(username), address=address, failed_at=now
    )
    session.add(attempt)
    session.flush()
    return attempt.id


def held_off(
    session: Session,
    username: str,
    address: str,
    limits: SignInLimits,
    *,
    besides: int,
) -> HeldOff | None:
    """Whether the sign-in counted as ``besides`` waits, and how long: until
    enough of the wrong ones in the window have left it, or (``busy``) a
    moment, while tries sent beside it are checked."""
    now = clock.now()
    recent = SignInFailure.failed_at > now - timedelta(seconds=limits.window_s)
    checking = SignInFailure.failed_at > now - timedelta(seconds=CHECKING_S)
    # One read, so that a try found wrong meanwhile is seen as checked or as
    # being checked, never as neither (as two reads could on PostgreSQL).
    tries = session.execute(
        select(SignInFailure.username, SignInFailure.checked, SignInFailure.failed_at)
        .where(
            SignInFailure.address == address,
            (recent & SignInFailure.checked)
            | (checking & ~SignInFailure.checked & (SignInFailure.id != besides)),
        )
        .order_by(SignInFailure.failed_at.desc())
    ).all()
    name = sign_in_name(username)
    counted = (
        (tries, limits.per_address, None),
        ([t for t in tries if t.username == name], limits.per_user, name),
    )
    for whose, allowed, named in counted:
        wrong = [t.failed_at for t in whose if t.checked]
        if len(wrong) >= allowed:
            # Held off until the oldest of the last ``allowed`` leaves.
            frees_at = clock.as_utc(wrong[allowed - 1]) + timedelta(
                seconds=limits.window_s
            )
            return HeldOff(max(1, math.ceil((frees_at - now).total_seconds())), named)
        if len(whose) >= allowed:
            return HeldOff(BUSY_RETRY_S, named, busy=True)
    return None


def checked_wrong(session: Session, attempt: int) -> None:
    """The try's password was wrong: it counts as one from now on."""
    session.execute(
        update(SignInFailure).where(SignInFailure.id == attempt).values(checked=True)
    )


def uncount_sign_in(session: Session, attempt: int) -> None:
    """A try held off unchecked is no wrong password."""
    session.execute(delete(SignInFailure).where(SignInFailure.id == attempt))


def forget_wrong_sign_ins(session: Session, username: str, address: str) -> None:
    """A right password: that user's wrong ones from this address are done."""
    session.execute(
        delete(SignInFailure).where(
            SignInFailure.username == sign_in_name(username),
            SignInFailure.address == address,
        )
    )


# User names being added, lower-cased (PostgreSQL advisory locks, in a
# namespace of their own).
_NAME_LOCKS = 0x5B19


def add_user(
    session: Session, username: str, password: str, *, role: str, full_name: str = ""
) -> User:
    if not USERNAME.fullmatch(username):
        raise UserError(
            "a user name is 1 to 64 letters, digits, '.', '_' or '-' (a to z "
            "only), starting with a letter or digit"
        )
    # A user's workbook is named after them.
    if is_device_name(username):
        raise UserError(f"{username!r} is reserved for a device on Windows")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not 8 <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password has 8 to {MAX_PASSWORD} characters")
    # Compared ignoring case: on a case-insensitive disk (macOS, Windows) the
    # two users' workbooks would be one file. On PostgreSQL the name is locked
    # until the transaction ends, so that two added at once are checked one
    # after the other (SQLite has one writer at a time).
    lock_keys(session, _NAME_LOCKS, [username.lower()])
    same = func.lower(User.username) == username.lower()
    existing = session.scalar(select(User.username).where(same))
    if existing is not None:
        raise UserError(f"user {existing!r} already exists")
    user = User(
        username=username,
        full_name=full_name or username,
        role=role,
        password_hash=hash_password(password),
    )
    session.add(user)
    session.flush()
    return user


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: User, name: str = "") -> str:
    """Create an API token; only its hash is stored, so show it once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_hash=token_digest(token)))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == token_digest(token))
    )
    return session.get(User, row.user_id) if row else None


def start_session(session: Session, user: User, max_age_s: float) -> str:
    """Sign a browser in: the token its cookie keeps. Sign-ins older than
    ``max_age_s``, whose cookies have expired, are cleared away."""
    now = clock.now()
    session.execute(
        delete(WebSession).where(
            WebSession.created_at < now - timedelta(seconds=max_age_s)
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(user_id=user.id, token_hash=token_digest(token), created_at=now)
    )
    return token


def user_for_session(session: Session, token: str, max_age_s: float) -> User | None:
    """Whose sign-in the cookie's token names, unless signed out or expired."""
    row = session.scalar(
        select(WebSession).where(
            WebSession.token_hash == token_digest(token),
            WebSession.created_at >= clock.now() - timedelta(seconds=max_age_s),
        )
    )
    return session.get(User, row.user_id) if row else None


def end_session(session: Session, token: str) -> None:
    session.execute(
        delete(WebSession).where(WebSession.token_hash == token_digest(token))
    )


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    # As bytes: compare_digest refuses text that is not ASCII.
    return bool(
        expected and given and hmac.compare_digest(expected.encode(), given.encode())
    )


def load_or_create_secret(data_dir: Path) -> str:
    """The cookie-signing key kept in the data folder, made on first start."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    return secret

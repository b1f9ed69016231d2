"""Password hashing with bcrypt and bearer tokens with HS256 JWTs."""

import secrets
import time
from dataclasses import dataclass

import bcrypt
import jwt

from rainchanel.errors import InvalidRequest, Unauthorized

# bcrypt reads at most 72 bytes of a password. Longer passwords are rejected
# at registration, so two passwords that share their first 72 bytes can
# never both log in, and every hash stays checkable by Go's bcrypt.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_BYTES = 6
# golang.org/x/crypto/bcrypt's DefaultCost, which the earlier server used.
DEFAULT_BCRYPT_COST = 10
JWT_ALGORITHM = "HS256"
JWT_SECRET_SETTING = "jwt_secret"

INVALID_CREDENTIALS = "invalid username or password"
VERIFIED_TOKEN_CACHE_ENTRIES = 10_000


def check_new_password(password: str) -> bytes:
    """Return the password's UTF-8 bytes, or raise InvalidRequest if its length is out of bounds."""
    encoded = password.encode("utf-8")
    if not MIN_PASSWORD_BYTES <= len(encoded) <= MAX_PASSWORD_BYTES:
        raise InvalidRequest(
            f"password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes of UTF-8, got {len(encoded)}"
        )
    return encoded


def hash_password(password: str, cost: int = DEFAULT_BCRYPT_COST) -> str:
    """Hash a password that passed check_new_password; blocking (run it in a thread)."""
    return bcrypt.hashpw(check_new_password(password), bcrypt.gensalt(rounds=cost)).decode("ascii")


def verify_password(password: str, password_hash: str | None) -> bool:
    """Return True when password matches; blocking (run it in a thread).

    A password over 72 bytes can never match, since none was accepted at
    registration. With no stored hash (unknown user) the check still runs
    against a dummy hash so both cases take about the same time.
    """
    encoded = password.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    if password_hash is None:
        bcrypt.checkpw(encoded, _DUMMY_HASH)
        return False
    try:
        return bcrypt.checkpw(encoded, password_hash.encode("ascii"))
    except ValueError:
        return False


_DUMMY_HASH = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds=DEFAULT_BCRYPT_COST))


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a protected route."""

    user_id: int
    username: str


class TokenService:
    """Issues and checks HS256 bearer tokens."""

    def __init__(self, secret: str, expires_seconds: int, leeway_seconds: int) -> None:
        self._secret = secret
        self.expires_seconds = expires_seconds
        self.leeway_seconds = leeway_seconds
        # Workers send the same token with every request; checking its
        # signature once and its expiry each time saves the HMAC and parsing.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, user_id: int, username: str) -> tuple[str, int]:
        """Return a token for the user and its expiry as Unix seconds."""
        issued_at = int(time.time())
        expires_at = issued_at + self.expires_seconds
        claims = {"sub": str(user_id), "user_id": user_id, "username": username, "iat": issued_at, "exp": expires_at}
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM), expires_at

    def verify(self, token: str) -> Principal:
        """Return the token's principal; raise Unauthorized for any invalid token."""
        cached = self._verified.get(token)
        if cached is not None and time.time() <= cached[1]:
            return cached[0]

        principal, expires_at = self._decode(token)
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_ENTRIES:
            self._verified.clear()
        self._verified[token] = (principal, expires_at + self.leeway_seconds)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            # Naming HS256 alone rejects "alg: none" and every other algorithm.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired; log in again") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc

        user_id = claims.get("user_id")
        if not isinstance(user_id, int) or claims["sub"] != str(user_id):
            raise Unauthorized("invalid token: the sub and user_id claims do not match")
        return Principal(user_id=user_id, username=str(claims.get("username", ""))), float(claims["exp"])


def generate_secret() -> str:
    return secrets.token_urlsafe(48)

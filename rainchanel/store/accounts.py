"""Users and server-wide settings shared by every server on one database."""

from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from rainchanel.errors import Conflict
from rainchanel.store.database import Database, now_us
from rainchanel.store.tables import server_settings, users


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str


class AccountStore:
    """Creates and finds users; keeps server-wide settings."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_user(self, username: str, password_hash: str) -> int:
        """Insert a user and return its id; raise Conflict when the name is taken."""

        def operation(connection):
            result = connection.execute(
                insert(users).values(username=username, password_hash=password_hash, created_at=now_us())
            )
            return result.inserted_primary_key[0]

        try:
            return await self.db.run(operation)
        except IntegrityError as exc:
            # The unique index decides, so two concurrent registrations of one
            # name cannot both succeed.
            raise Conflict(f"username {username!r} is already taken; choose another one") from exc

    async def find_user(self, username: str) -> User | None:
        statement = select(users.c.id, users.c.username, users.c.password_hash).where(users.c.username == username)

        def operation(connection):
            return connection.execute(statement).first()

        row = await self.db.read(operation)
        return User(*row) if row else None

    async def get_or_create_setting(self, name: str, candidate: str) -> tuple[str, bool]:
        """Return the stored value of a setting, storing candidate if it has none.

        The second item is True when candidate was stored by this call. When
        several servers start at once, the primary key lets one insert win and
        every server reads back that one value.
        """

        def operation(connection):
            existing = connection.scalar(select(server_settings.c.value).where(server_settings.c.name == name))
            if existing is not None:
                return existing, False
            connection.execute(insert(server_settings).values(name=name, value=candidate))
            return candidate, True

        try:
            return await self.db.run(operation)
        except IntegrityError:
            return await self.db.run(operation)

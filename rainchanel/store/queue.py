"""Queue operations: publish, claim, complete, fail, heartbeat, release,
reclaim_expired and deliver_results, each one transaction.

Every time comparison and every new deadline uses the database clock
(`now_us()`), so servers with skewed clocks agree on leases and backoff.
"""

import functools
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import BigInteger, Integer, String, bindparam, case, cast, delete, func, insert, literal, select, update
from sqlalchemy.engine import Connection

from rainchanel.errors import Conflict, Forbidden, NotFound, RainChanelError
from rainchanel.store.clock import seconds_to_us
from rainchanel.store.database import Database, now_us, random_unit
from rainchanel.store.modules import ModuleStore
from rainchanel.store.status import ALL_STATUSES, TERMINAL_STATUSES, TaskStatus
from rainchanel.store.tables import tasks, undelivered_results

LEASE_TOKEN_BYTES = 24
# Bounds one reclaim transaction; the loop comes back for the rest.
RECLAIM_BATCH_SIZE = 1000
# Prebuilt outcome UPDATEs kept, by kind of outcome and number of rows.
OUTCOME_STATEMENT_CACHE_SIZE = 256
# Kinds of outcome, each recorded by an UPDATE of its own.
COMPLETED, FAILED, RETRIED = "completed", "failed", "retried"


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry n: base * 2^(n-1), capped, shortened by up to 20 % jitter."""

    base_seconds: float
    max_seconds: float


@dataclass
class NewTask:
    """A validated task ready to be stored."""

    owner_id: int
    module_sha256: str
    wasm: bytes
    func: str
    args: list
    max_attempts: int
    timeout_seconds: int
    stdin: str | None = None
    env: dict[str, str] | None = None
    priority: int = 0
    delay_seconds: float = 0


@dataclass
class ClaimedTask:
    """A task handed to a worker under a lease."""

    id: int
    owner_id: int
    module_sha256: str
    wasm: bytes
    wasm_base64: str
    func: str
    args: list
    stdin: str | None
    env: dict[str, str] | None
    attempt: int
    max_attempts: int
    timeout_seconds: int
    priority: int
    lease_token: str
    lease_expires_at: int
    created_at: int
    claimed_at: int


@dataclass
class TaskRecord:
    """A task as its owner sees it."""

    id: int
    owner_id: int
    module_sha256: str
    func: str
    args: list
    status: TaskStatus
    attempts: int
    max_attempts: int
    timeout_seconds: int
    priority: int
    last_error: str | None
    result: Any
    created_at: int
    updated_at: int
    finished_at: int | None
    # Position in the delivery sequence, set on records from deliver_results.
    delivery_seq: int | None = None


@dataclass
class Outcome:
    """What an accepted report did to a task, for the response, logs and metrics."""

    task_id: int
    owner_id: int
    status: TaskStatus
    attempt: int
    run_seconds: float | None
    retried: bool = False


@dataclass
class Report:
    """An outcome reported by a worker for the attempt it holds."""

    task_id: int
    user_id: int
    lease_token: str | None
    created_by: int | None
    completed: bool
    result_json: str | None = None
    error: str | None = None
    retryable: bool = True


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class TaskQueue:
    """All task and result state transitions, behind domain verbs."""

    def __init__(self, db: Database, module_store: ModuleStore, backoff: BackoffPolicy) -> None:
        self.db = db
        self.modules = module_store
        self.backoff = backoff
        self._claim_select, self._claim_update = self._claim_statements()
        self._claimable_probe = (
            select(tasks.c.id).where(tasks.c.status == TaskStatus.PENDING, tasks.c.available_at <= now_us()).limit(1)
        )
        self._lock_select = self._lock_statement()
        self._delivery_select, self._delivery_delete = self._delivery_statements()
        self._records_select = select(*RECORD_COLUMNS).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
        # Report batches mostly repeat a few sizes, so only a few statements are built.
        self._outcome_update = functools.lru_cache(maxsize=OUTCOME_STATEMENT_CACHE_SIZE)(self._build_outcome_update)

    # --- publishing -----------------------------------------------------

    async def publish(self, new_tasks: list[NewTask]) -> list[int]:
        """Store the tasks (and any module not stored yet) in one transaction."""

        def operation(connection: Connection) -> list[int]:
            for sha256, wasm in {t.module_sha256: t.wasm for t in new_tasks}.items():
                self.modules.save(connection, sha256, wasm)

            if len(new_tasks) == 1:
                # The clock expression inside the INSERT saves a round trip.
                result = connection.execute(insert(tasks).values(self._task_row(new_tasks[0], now_us())))
                return [result.inserted_primary_key[0]]

            now = connection.scalar(select(now_us()))
            rows = [self._task_row(new_task, now) for new_task in new_tasks]
            if connection.dialect.insert_executemany_returning_sort_by_parameter_order:
                statement = insert(tasks).returning(tasks.c.id, sort_by_parameter_order=True)
                return list(connection.execute(statement, rows).scalars())
            # MySQL 8 has no INSERT ... RETURNING: one statement per task.
            return [connection.execute(insert(tasks).values(row)).inserted_primary_key[0] for row in rows]

        task_ids = await self.db.run(operation)
        for sha256, wasm in {t.module_sha256: t.wasm for t in new_tasks}.items():
            self.modules.cache.put(sha256, wasm)
        return task_ids

    @staticmethod
    def _task_row(new_task: NewTask, now) -> dict:
        """Column values for a new task; now is the database clock, as a value or an SQL expression."""
        return {
            "owner_id": new_task.owner_id,
            "module_sha256": new_task.module_sha256,
            "func": new_task.func,
            "args": _json(new_task.args),
            "stdin": new_task.stdin,
            "env": _json(new_task.env) if new_task.env is not None else None,
            "status": TaskStatus.PENDING,
            "priority": new_task.priority,
            "attempts": 0,
            "max_attempts": new_task.max_attempts,
            "timeout_seconds": new_task.timeout_seconds,
            "available_at": now + seconds_to_us(new_task.delay_seconds),
            "created_at": now,
            "updated_at": now,
        }

    # --- claiming -------------------------------------------------------

    async def claim(self, worker_id: int, max_tasks: int = 1) -> list[ClaimedTask]:
        """Lease up to max_tasks available tasks to worker_id, best first."""

        def operation(connection: Connection) -> list[ClaimedTask]:
            rows = connection.execute(self._claim_select, {"max_tasks": max_tasks}).all()
            if not rows:
                return []

            now = rows[0].now
            token_prefix = secrets.token_urlsafe(LEASE_TOKEN_BYTES) + "."
            # The rows are locked (SKIP LOCKED on MySQL, the write lock on
            # SQLite), so updating them by primary key cannot lose a race.
            connection.execute(
                self._claim_update,
                {"ids": [row.id for row in rows], "token_prefix": token_prefix, "worker_id": worker_id, "now": now},
            )
            module_bytes = self.modules.load_many(connection, {row.module_sha256 for row in rows})
            return [self._claimed(row, token_prefix, module_bytes[row.module_sha256], now) for row in rows]

        return await self.db.run(operation)

    async def has_claimable(self) -> bool:
        """Return whether a pending task is available now, without locking or claiming it."""
        return await self.db.read(lambda connection: connection.execute(self._claimable_probe).first() is not None)

    def _claim_statements(self):
        """Build the claim's SELECT and UPDATE once; they run with bound parameters."""
        select_candidates = (
            select(
                tasks.c.id,
                tasks.c.owner_id,
                tasks.c.module_sha256,
                tasks.c.func,
                tasks.c.args,
                tasks.c.stdin,
                tasks.c.env,
                tasks.c.attempts,
                tasks.c.max_attempts,
                tasks.c.timeout_seconds,
                tasks.c.priority,
                tasks.c.created_at,
                now_us().label("now"),
            )
            .where(tasks.c.status == TaskStatus.PENDING, tasks.c.available_at <= now_us())
            .order_by(tasks.c.priority.desc(), tasks.c.available_at, tasks.c.id)
            .limit(bindparam("max_tasks", type_=Integer))
        )
        if not self.db.is_sqlite:
            # Concurrent claimers skip each other's locked rows instead of
            # queueing behind them or taking the same task twice.
            select_candidates = select_candidates.with_for_update(skip_locked=True)

        now = bindparam("now", type_=BigInteger)
        # Each task's token is a random prefix, shared by the tasks of one
        # claim, followed by the task id. Knowing one token of a claim
        # reveals the others, but they are all leased to the same worker.
        lease_token = bindparam("token_prefix", type_=String) + cast(tasks.c.id, String)
        update_leases = (
            update(tasks)
            .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
            .values(
                status=TaskStatus.PROCESSING,
                attempts=tasks.c.attempts + 1,
                lease_token=lease_token,
                lease_owner_id=bindparam("worker_id", type_=BigInteger),
                lease_expires_at=now + tasks.c.timeout_seconds * 1_000_000,
                claimed_at=now,
                updated_at=now,
            )
        )
        return select_candidates, update_leases

    @staticmethod
    def _claimed(row, token_prefix: str, module: tuple[bytes, str], now: int) -> ClaimedTask:
        return ClaimedTask(
            id=row.id,
            owner_id=row.owner_id,
            module_sha256=row.module_sha256,
            wasm=module[0],
            wasm_base64=module[1],
            func=row.func,
            args=orjson.loads(row.args),
            stdin=row.stdin,
            env=orjson.loads(row.env) if row.env is not None else None,
            attempt=row.attempts + 1,
            max_attempts=row.max_attempts,
            timeout_seconds=row.timeout_seconds,
            priority=row.priority,
            lease_token=token_prefix + str(row.id),
            lease_expires_at=now + row.timeout_seconds * 1_000_000,
            created_at=row.created_at,
            claimed_at=now,
        )

    # --- reports from the lease holder ------------------------------------

    async def report(self, reports: list[Report]) -> list[Outcome | RainChanelError]:
        """Record reported outcomes in one transaction; exactly one outcome per task.

        Each report gets its own Outcome or error, in order; a refused report
        does not stop the others.
        """

        def operation(connection: Connection) -> list[Outcome | RainChanelError]:
            leases = self._lock_leases(connection, {report.task_id for report in reports})
            answers: list[Outcome | RainChanelError] = []
            for report in reports:
                lease = leases.get(report.task_id)
                try:
                    _check_lease(lease, report.task_id, report.user_id, report.lease_token, report.created_by)
                except RainChanelError as exc:
                    answers.append(exc)
                    continue
                outcome = self._decide(lease, report)
                # A second report for the same task in this batch finds it
                # no longer processing.
                lease["status"] = outcome.status
                answers.append(outcome)

            accepted = [(report, answer) for report, answer in zip(reports, answers) if isinstance(answer, Outcome)]
            if accepted:
                self._apply(connection, accepted, now=next(iter(leases.values()))["now"])
            return answers

        return await self.db.run(operation)

    async def complete(
        self, task_id: int, user_id: int, result_json: str, lease_token: str | None, created_by: int | None
    ) -> Outcome:
        """Record the result of the current lease, or raise why it is refused."""
        report = Report(task_id, user_id, lease_token, created_by, completed=True, result_json=result_json)
        return _single(await self.report([report]))

    async def fail(
        self,
        task_id: int,
        user_id: int,
        error: str,
        lease_token: str | None,
        created_by: int | None,
        retryable: bool = True,
    ) -> Outcome:
        """Record a failed attempt: retry after a backoff, or fail for good."""
        report = Report(task_id, user_id, lease_token, created_by, completed=False, error=error, retryable=retryable)
        return _single(await self.report([report]))

    @staticmethod
    def _decide(lease: dict, report: Report) -> Outcome:
        run_seconds = max(0, lease["now"] - (lease["claimed_at"] or lease["now"])) / 1_000_000
        fields = {"task_id": report.task_id, "owner_id": lease["owner_id"], "attempt": lease["attempts"]}
        if report.completed:
            return Outcome(status=TaskStatus.COMPLETED, run_seconds=run_seconds, **fields)
        if report.retryable and lease["attempts"] < lease["max_attempts"]:
            return Outcome(status=TaskStatus.PENDING, run_seconds=run_seconds, retried=True, **fields)
        return Outcome(status=TaskStatus.FAILED, run_seconds=run_seconds, **fields)

    def _apply(self, connection: Connection, accepted: list[tuple["Report", Outcome]], now: int) -> None:
        completions = {r.task_id: r.result_json for r, o in accepted if o.status == TaskStatus.COMPLETED}
        failures = {r.task_id: r.error for r, o in accepted if o.status == TaskStatus.FAILED}
        retries = {r.task_id: r.error for r, o in accepted if o.retried}

        # One UPDATE per kind of outcome, each row taking its own value.
        for kind, values in ((COMPLETED, completions), (FAILED, failures), (RETRIED, retries)):
            if values:
                statement = self._outcome_update(kind, len(values))
                connection.execute(statement, _per_row_parameters(values, now))

        # Inserted in report order, so the sequence follows the order in
        # which the outcomes were recorded.
        deliveries = [
            {"owner_id": outcome.owner_id, "task_id": outcome.task_id}
            for _, outcome in accepted
            if outcome.status in TERMINAL_STATUSES
        ]
        if deliveries:
            connection.execute(insert(undelivered_results), deliveries)

    async def heartbeat(self, task_id: int, user_id: int, lease_token: str) -> int:
        """Extend the lease to the task's timeout from now; return the new expiry."""

        def operation(connection: Connection) -> int:
            lease = (self._lock_leases(connection, {task_id})).get(task_id)
            _check_lease(lease, task_id, user_id, lease_token, None, require_holder=True)
            expires_at = lease["now"] + lease["timeout_seconds"] * 1_000_000
            connection.execute(
                update(tasks).where(tasks.c.id == task_id).values(lease_expires_at=expires_at, updated_at=lease["now"])
            )
            return expires_at

        return await self.db.run(operation)

    async def release(self, task_id: int, user_id: int, lease_token: str) -> None:
        """Return a claimed task to pending without counting the attempt.

        available_at is left as it was, so the task keeps its place in the queue.
        """

        def operation(connection: Connection) -> None:
            lease = (self._lock_leases(connection, {task_id})).get(task_id)
            _check_lease(lease, task_id, user_id, lease_token, None, require_holder=True)
            connection.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(
                    status=TaskStatus.PENDING,
                    attempts=tasks.c.attempts - 1,
                    lease_token=None,
                    lease_owner_id=None,
                    lease_expires_at=None,
                    updated_at=lease["now"],
                )
            )

        await self.db.run(operation)

    def _lock_leases(self, connection: Connection, task_ids: set[int]) -> dict[int, dict]:
        """Lock the task rows (in id order) and return their lease state by id."""
        rows = connection.execute(self._lock_select, {"ids": sorted(task_ids)})
        return {row.id: dict(row._mapping) for row in rows}

    def _lock_statement(self):
        statement = (
            select(
                tasks.c.id,
                tasks.c.owner_id,
                tasks.c.status,
                tasks.c.attempts,
                tasks.c.max_attempts,
                tasks.c.timeout_seconds,
                tasks.c.lease_token,
                tasks.c.lease_owner_id,
                tasks.c.claimed_at,
                now_us().label("now"),
            )
            .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
            .order_by(tasks.c.id)
        )
        if not self.db.is_sqlite:
            # A concurrent report, heartbeat or reclaim of the same task waits
            # here, so exactly one of them sees the lease as current. Locking
            # in id order keeps two batches from deadlocking each other.
            statement = statement.with_for_update()
        return statement


    def _build_outcome_update(self, kind: str, count: int):
        """Build the UPDATE that records count outcomes of one kind, each row taking its own value.

        It is built once per kind and row count (see _outcome_update), so a
        report only binds parameters: id_0..id_{count-1} with
        value_0..value_{count-1} (the result or the error), and now.
        """
        ids = [bindparam(f"id_{index}", type_=BigInteger) for index in range(count)]
        value_type = tasks.c.result.type if kind == COMPLETED else tasks.c.last_error.type
        per_row = case(*[(tasks.c.id == ids[index], bindparam(f"value_{index}", type_=value_type)) for index in range(count)])
        now = bindparam("now", type_=BigInteger)
        statement = update(tasks).where(tasks.c.id.in_(ids))

        if kind == RETRIED:
            return statement.values(
                status=TaskStatus.PENDING,
                available_at=now + self._backoff_us(tasks.c.attempts),
                last_error=per_row,
                lease_token=None,
                lease_owner_id=None,
                lease_expires_at=None,
                updated_at=now,
            )
        finished = {"lease_token": None, "lease_expires_at": None, "finished_at": now, "updated_at": now}
        if kind == COMPLETED:
            return statement.values(status=TaskStatus.COMPLETED, result=per_row, last_error=None, **finished)
        return statement.values(status=TaskStatus.FAILED, last_error=per_row, **finished)

    def _backoff_us(self, attempts_column):
        """SQL for the delay after failed attempt n: min(base * 2^(n-1), max) * U[0.8, 1]."""
        base_us = seconds_to_us(self.backoff.base_seconds)
        max_us = seconds_to_us(self.backoff.max_seconds)
        # 2^40 s is far past any cap, so clamping the exponent there avoids overflow.
        exponent = case((attempts_column - 1 > 40, 40), else_=attempts_column - 1)
        uncapped = literal(base_us, BigInteger) * literal(1, BigInteger).bitwise_lshift(exponent)
        capped = case((uncapped > max_us, max_us), else_=uncapped)
        return cast(capped * (0.8 + 0.2 * random_unit()), BigInteger)

    # --- reclaiming expired leases -----------------------------------------

    async def reclaim_expired(self) -> tuple[int, int]:
        """Treat every expired lease as a failed attempt; return (retried, failed)."""

        def operation(connection: Connection) -> tuple[int, int]:
            expired_ids = (
                connection.scalars(
                    select(tasks.c.id)
                    .where(tasks.c.status == TaskStatus.PROCESSING, tasks.c.lease_expires_at < now_us())
                    .order_by(tasks.c.lease_expires_at)
                    .limit(RECLAIM_BATCH_SIZE)
                )
            ).all()
            if not expired_ids:
                return 0, 0

            marker = "reclaim:" + secrets.token_urlsafe(16)
            reclaimed = connection.execute(self._reclaim_statement(expired_ids, marker))
            if reclaimed.rowcount == 0:
                return 0, 0

            failed_for_good = connection.execute(
                insert(undelivered_results).from_select(
                    ["owner_id", "task_id"],
                    select(tasks.c.owner_id, tasks.c.id).where(
                        tasks.c.id.in_(expired_ids), tasks.c.lease_token == marker
                    ),
                )
            )
            connection.execute(
                update(tasks).where(tasks.c.id.in_(expired_ids), tasks.c.lease_token == marker).values(lease_token=None)
            )
            failed = failed_for_good.rowcount
            return reclaimed.rowcount - failed, failed

        return await self.db.run(operation)

    def _reclaim_statement(self, expired_ids: list[int], marker: str):
        """Build one conditional UPDATE over the expired leases.

        The WHERE clause is evaluated again on each locked row, so a report,
        a heartbeat or another server's reclaim that got there first leaves
        the row out. Final failures are tagged with marker so the caller can
        queue exactly the rows this statement failed for delivery.
        """
        last_attempt = tasks.c.attempts >= tasks.c.max_attempts
        now = now_us()
        error = literal("lease expired after ") + cast(tasks.c.timeout_seconds, String) + literal(" s without a report")
        return (
            update(tasks)
            .where(
                tasks.c.id.in_(expired_ids),
                tasks.c.status == TaskStatus.PROCESSING,
                tasks.c.lease_expires_at < now,
            )
            .values(
                # No assignment below reads a column assigned before it:
                # MySQL evaluates SET clauses left to right on the new values.
                status=case((last_attempt, TaskStatus.FAILED.value), else_=TaskStatus.PENDING.value),
                available_at=case((last_attempt, tasks.c.available_at), else_=now + self._backoff_us(tasks.c.attempts)),
                finished_at=case((last_attempt, now), else_=None),
                lease_token=case((last_attempt, marker), else_=None),
                last_error=error,
                lease_owner_id=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )

    # --- delivering results ------------------------------------------------

    async def deliver_results(self, owner_id: int, max_results: int = 1) -> list[TaskRecord]:
        """Hand the owner's oldest undelivered outcomes over, each exactly once."""

        def operation(connection: Connection) -> list[TaskRecord]:
            parameters = {"owner_id": owner_id, "max_results": max_results}
            pending = connection.execute(self._delivery_select, parameters).all()
            if not pending:
                return []

            connection.execute(self._delivery_delete, {"seqs": [row.seq for row in pending]})
            records = self._load_records(connection, [row.task_id for row in pending])
            delivered = []
            for row in pending:
                if row.task_id in records:
                    records[row.task_id].delivery_seq = row.seq
                    delivered.append(records[row.task_id])
            return delivered

        return await self.db.run(operation)

    def _delivery_statements(self):
        select_pending = (
            select(undelivered_results.c.seq, undelivered_results.c.task_id)
            .where(undelivered_results.c.owner_id == bindparam("owner_id", type_=BigInteger))
            .order_by(undelivered_results.c.seq)
            .limit(bindparam("max_results", type_=Integer))
        )
        if not self.db.is_sqlite:
            # Two concurrent collectors lock disjoint rows, and the delete
            # commits with the read, so no result is delivered twice.
            select_pending = select_pending.with_for_update(skip_locked=True)
        delete_delivered = delete(undelivered_results).where(
            undelivered_results.c.seq.in_(bindparam("seqs", expanding=True))
        )
        return select_pending, delete_delivered

    async def undeliver(self, records: list[TaskRecord]) -> None:
        """Queue delivered records again at their old places, for a response that could not be sent."""
        rows = [{"seq": r.delivery_seq, "owner_id": r.owner_id, "task_id": r.id} for r in records]

        def operation(connection: Connection) -> None:
            connection.execute(insert(undelivered_results), rows)

        await self.db.run(operation)

    # --- reading -------------------------------------------------------------

    async def get_task(self, task_id: int, owner_id: int) -> TaskRecord:
        records = await self.db.read(lambda connection: self._load_records(connection, [task_id]))
        record = records.get(task_id)
        if record is None or record.owner_id != owner_id:
            raise NotFound(f"task {task_id} not found")
        return record

    def _load_records(self, connection, task_ids: list[int]) -> dict[int, TaskRecord]:
        rows = connection.execute(self._records_select, {"ids": task_ids})
        return {row.id: _record(row) for row in rows}

    async def count_by_status(self) -> dict[str, int]:
        def operation(connection):
            return connection.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()

        counts = {status.value: 0 for status in ALL_STATUSES}
        for status, count in await self.db.read(operation):
            counts[status] = count
        return counts


RECORD_COLUMNS = (
    tasks.c.id,
    tasks.c.owner_id,
    tasks.c.module_sha256,
    tasks.c.func,
    tasks.c.args,
    tasks.c.status,
    tasks.c.attempts,
    tasks.c.max_attempts,
    tasks.c.timeout_seconds,
    tasks.c.priority,
    tasks.c.last_error,
    tasks.c.result,
    tasks.c.created_at,
    tasks.c.updated_at,
    tasks.c.finished_at,
)


def _record(row) -> TaskRecord:
    return TaskRecord(
        id=row.id,
        owner_id=row.owner_id,
        module_sha256=row.module_sha256,
        func=row.func,
        args=orjson.loads(row.args),
        status=TaskStatus(row.status),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        timeout_seconds=row.timeout_seconds,
        priority=row.priority,
        last_error=row.last_error,
        result=orjson.loads(row.result) if row.result is not None else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _check_lease(
    lease: dict | None,
    task_id: int,
    user_id: int,
    lease_token: str | None,
    created_by: int | None,
    require_holder: bool = False,
) -> None:
    """Raise unless the caller holds the task's current lease.

    Checked in this order: unknown task (404), a created_by that is not the
    owner (403), not the current lease or already finished (409). A report
    without a lease token, from a client older than leases, is accepted
    from the user holding the lease.
    """
    if lease is None:
        raise NotFound(f"task {task_id} not found")
    if created_by is not None and created_by != lease["owner_id"]:
        raise Forbidden(f"created_by {created_by} does not match the owner of task {task_id}")
    if lease["status"] != TaskStatus.PROCESSING:
        raise Conflict(_not_leased_message(task_id, lease["status"]))
    if lease_token is not None and not secrets.compare_digest(lease_token, lease["lease_token"] or ""):
        raise Conflict(f"lease_token does not match the current lease of task {task_id}; the lease was lost")
    if (lease_token is None or require_holder) and lease["lease_owner_id"] != user_id:
        raise Conflict(f"task {task_id} is leased to another worker")


def _per_row_parameters(values_by_id: dict[int, Any], now: int) -> dict[str, Any]:
    """Return the parameters of an outcome UPDATE built by TaskQueue._build_outcome_update."""
    parameters: dict[str, Any] = {"now": now}
    for index, (task_id, value) in enumerate(values_by_id.items()):
        parameters[f"id_{index}"] = task_id
        parameters[f"value_{index}"] = value
    return parameters


def _single(answers: list) -> "Outcome":
    answer = answers[0]
    if isinstance(answer, RainChanelError):
        raise answer
    return answer


def _not_leased_message(task_id: int, status: str) -> str:
    if status == TaskStatus.PENDING:
        return f"task {task_id} is not leased: its lease expired or was released, and it is waiting for a new claim"
    return f"task {task_id} is already {status}; a task accepts one outcome"

"""Customers and policies as a user may see and change them.

An admin sees the whole agency; an agent sees their own book. Every change
checks the version the caller based it on, so no edit silently overwrites
another one made meanwhile.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Select,
    Table,
    bindparam,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from sheetbridge import clock
from sheetbridge.db import lock_keys, search_form, search_text
from sheetbridge.insurance.models import Customer, Policy, User, fold_number
from sheetbridge.insurance.schemas import (
    CustomerCreate,
    CustomerOut,
    CustomerUpdate,
    PolicyCreate,
    PolicyOut,
    PolicyUpdate,
)
from sheetbridge.sync.models import SyncConflict

# How a sync conflict ends when its record is deleted.
RECORD_DELETED = "record deleted"


def close_conflicts_of(
    session: Session, entity: str, record_id: int, *, target_id: int | None = None
) -> None:
    """Close the open sync conflicts of a record deleted (in every sheet) or
    gone from one book (``target_id``'s): no choice about its fields is left
    to make."""
    statement = update(SyncConflict).where(
        SyncConflict.entity == entity,
        SyncConflict.record_id == record_id,
        SyncConflict.resolved_at.is_(None),
    )
    if target_id is not None:
        statement = statement.where(SyncConflict.target_id == target_id)
    session.execute(
        statement.values(resolved_at=clock.now(), resolution=RECORD_DELETED)
    )


# Policy numbers being saved, by their folded form (PostgreSQL advisory
# locks, in a namespace of their own).
_NUMBER_LOCKS = 0x5B18


class DomainError(Exception):
    """Root of the insurance domain's errors."""


class RecordNotFound(DomainError):
    def __init__(self, entity: str, record_id: int) -> None:
        super().__init__(f"{entity} {record_id} does not exist")


class StaleVersion(DomainError):
    """The edit was based on an older version than the stored one."""

    def __init__(self, current: Any) -> None:
        super().__init__("the record was changed since you loaded it")
        self.current = current


class InvalidField(DomainError):
    """A value that passes its type but not the rules of the agency's book."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NumberTaken(InvalidField):
    """A policy number another policy (``holder``) has."""

    def __init__(self, message: str, holder: int) -> None:
        super().__init__("policy_number", message)
        self.holder = holder


class InUse(DomainError):
    """The record cannot be deleted while others depend on it."""


Row = TypeVar("Row", Customer, Policy)


@dataclass(frozen=True)
class ListQuery:
    q: str = ""
    status: str | None = None
    line_of_business: str | None = None
    carrier: str | None = None
    agent_id: int | None = None
    customer_id: int | None = None
    ids: tuple[int, ...] = ()
    limit: int = 50
    offset: int = 0
    sort: str = "id"


def _contains(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere in a :class:`search_text`,
    its wildcards taken literally."""
    folded = str(search_form(text))
    escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _look_alike(mine: str, theirs: str) -> str:
    """Which characters make two numbers that look the same differ: accents
    typed apart, invisible ones, full-width forms."""
    sides = (("yours", _unusual(mine)), ("that one", _unusual(theirs)))
    told = [f"{whose} holds {', '.join(names)}" for whose, names in sides if names]
    if not told:
        return ""
    one = sum(len(names) for _, names in sides) == 1
    what = "a character that looks" if one else "characters that look"
    return f" ({'; '.join(told)}, {what} like part of another)"


def _unusual(text: str) -> list[str]:
    return [
        f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"
        for char in dict.fromkeys(text)
        if unicodedata.category(char) in ("Mn", "Me", "Cf")
        or unicodedata.normalize("NFKC", char) != char
        or fold_number(char) != char.casefold()
    ]


def customer_out(customer: Customer) -> CustomerOut:
    return CustomerOut.model_validate(
        {**_columns(customer), "agent": customer.agent.username}
    )


def policy_out(policy: Policy) -> PolicyOut:
    return PolicyOut.model_validate(
        {
            **_columns(policy),
            "agent": policy.agent.username,
            "customer": policy.customer.name,
        }
    )


def _columns(row: Customer | Policy) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def scoped(statement: Select[tuple[Row]], model: type[Row], user: User) -> Any:
    """Limit a query to the records the user may see."""
    if user.is_admin:
        return statement
    return statement.where(model.agent_id == user.id)


class Book:
    """The records one user works with, inside one database session."""

    def __init__(self, session: Session, user: User) -> None:
        self.session = session
        self.user = user

    # -- customers ------------------------------------------------------------

    def list_customers(self, query: ListQuery) -> tuple[list[Customer], int]:
        statement = scoped(select(Customer), Customer, self.user)
        if query.q:
            pattern = _contains(query.q)
            statement = statement.where(
                or_(
                    search_text(Customer.name).like(pattern, escape="\\"),
                    search_text(Customer.email).like(pattern, escape="\\"),
                    Customer.phone.like(pattern, escape="\\"),
                    search_text(Customer.city).like(pattern, escape="\\"),
                    Customer.zip_code.like(pattern, escape="\\"),
                )
            )
        if query.agent_id is not None:
            statement = statement.where(Customer.agent_id == query.agent_id)
        if query.ids:
            statement = statement.where(Customer.id.in_(query.ids))
        return self._page(statement, Customer, query)

    def get_customer(self, customer_id: int) -> Customer:
        return self._get(Customer, customer_id, "customer")

    def create_customer(self, data: CustomerCreate) -> Customer:
        fields = data.model_dump(exclude={"agent_id"})
        customer = Customer(**fields, agent_id=self._agent_for(data.agent_id))
        self.session.add(customer)
        self.session.flush()
        return customer

    def update_customer(self, customer_id: int, data: CustomerUpdate) -> Customer:
        customer = self.get_customer(customer_id)
        changes = data.model_dump(exclude_unset=True, exclude={"version"})
        if "agent_id" in changes:
            changes["agent_id"] = self._agent_for(changes["agent_id"])
        was = customer.agent_id
        updated = self._update(customer, data.version, changes)
        if updated.agent_id != was:
            self._move_policies(customer_id, was, updated.agent_id)
        return updated

    def _move_policies(self, customer_id: int, was: int, agent_id: int) -> None:
        """A customer's policies go along to their new agent, but those of a
        third agent: without them the old agent would keep policies of a
        customer no longer in their book."""
        policies = self.session.scalars(
            select(Policy).where(
                Policy.customer_id == customer_id, Policy.agent_id == was
            )
        )
        now = clock.now()
        for policy in policies:
            policy.agent_id = agent_id
            policy.updated_at = now
        self.session.flush()

    def delete_customer(self, customer_id: int, version: int | None) -> None:
        customer = self.get_customer(customer_id)
        self._check_version(customer, version)
        policies = self.session.scalar(
            select(func.count()).where(Policy.customer_id == customer_id)
        )
        if policies:
            raise InUse(
                f"customer {customer_id} still has "
                + (
                    "1 policy; delete or move it first"
                    if policies == 1
                    else f"{policies} policies; delete or move them first"
                )
            )
        self.session.delete(customer)
        self.session.flush()
        close_conflicts_of(self.session, "customer", customer_id)

    # -- policies -------------------------------------------------------------

    def list_policies(self, query: ListQuery) -> tuple[list[Policy], int]:
        statement = scoped(select(Policy), Policy, self.user).join(Policy.customer)
        if query.q:
            pattern = _contains(query.q)
            statement = statement.where(
                or_(
                    Policy.policy_number_key.like(
                        _contains(fold_number(query.q)), escape="\\"
                    ),
                    search_text(Policy.carrier).like(pattern, escape="\\"),
                    search_text(Customer.name).like(pattern, escape="\\"),
                )
            )
        for column, value in (
            (Policy.status, query.status),
            (Policy.line_of_business, query.line_of_business),
            (Policy.carrier, query.carrier),
            (Policy.agent_id, query.agent_id),
            (Policy.customer_id, query.customer_id),
        ):
            if value is not None:
                statement = statement.where(column == value)
        if query.ids:
            statement = statement.where(Policy.id.in_(query.ids))
        return self._page(statement, Policy, query)

    def get_policy(self, policy_id: int) -> Policy:
        return self._get(Policy, policy_id, "policy")

    def create_policy(self, data: PolicyCreate) -> Policy:
        customer = self._customer_for_policy(data.customer_id)
        agent_id = (
            self._agent_for(data.agent_id) if data.agent_id else customer.agent_id
        )
        self._check_policy_number(data.policy_number, None)
        fields = data.model_dump(exclude={"agent_id"})
        policy = Policy(**fields, agent_id=agent_id)
        self.session.add(policy)
        self._flush("policy_number")
        return policy

    def update_policy(self, policy_id: int, data: PolicyUpdate) -> Policy:
        policy = self.get_policy(policy_id)
        changes = data.model_dump(exclude_unset=True, exclude={"version"})
        if "customer_id" in changes:
            self._customer_for_policy(changes["customer_id"])
        if "agent_id" in changes:
            changes["agent_id"] = self._agent_for(changes["agent_id"])
        if "policy_number" in changes:
            self._check_policy_number(changes["policy_number"], policy_id)
        effective = changes.get("effective_date", policy.effective_date)
        expiration = changes.get("expiration_date", policy.expiration_date)
        if expiration < effective:
            raise InvalidField(
                "expiration_date",
                f"{expiration.isoformat()} is before the effective date, "
                f"{effective.isoformat()}",
            )
        return self._update(policy, data.version, changes)

    @staticmethod
    def trading_numbers(
        wanted: Mapping[int, object], held: Mapping[int, str]
    ) -> set[int]:
        """Of the policies to be given new numbers (``wanted``, by ID), those
        taking a number another of them gives up, and those giving it up
        (two swapping theirs, say): they must be updated together, with
        :meth:`free_policy_numbers`. ``held``: each one's number now. In any
        case, as numbers are told apart."""
        holders = {fold_number(number): policy_id for policy_id, number in held.items()}
        trading: set[int] = set()
        for policy_id, number in wanted.items():
            holder = holders.get(fold_number(str(number)))
            if holder is not None and holder != policy_id:
                trading |= {policy_id, holder}
        return trading

    def free_policy_numbers(self, policy_ids: Collection[int]) -> None:
        """Let the policies ``policy_ids`` take one another's numbers, as two
        rows of a sheet that swap theirs: until its update gives it a new
        one, each holds a stand-in no number typed anywhere can equal (it
        begins with a control character). For the caller's savepoint, which
        must be undone if any of the policies is not given its new number.
        Policies the session holds keep their numbers there, for the checks
        of the updates that follow: load them first, and hold on to them."""
        table = Policy.__table__
        assert isinstance(table, Table)
        self.session.execute(
            update(table)
            .where(table.c.id == bindparam("policy"))
            .values(
                policy_number=bindparam("stand_in"),
                policy_number_key=bindparam("stand_in"),
            ),
            [{"policy": id_, "stand_in": f"\x01{id_}"} for id_ in policy_ids],
        )

    def delete_policy(self, policy_id: int, version: int | None) -> None:
        policy = self.get_policy(policy_id)
        self._check_version(policy, version)
        self.session.delete(policy)
        self.session.flush()
        close_conflicts_of(self.session, "policy", policy_id)

    # -- shared ---------------------------------------------------------------

    def _page(
        self, statement: Any, model: type[Customer] | type[Policy], query: ListQuery
    ) -> tuple[list[Any], int]:
        total = self.session.scalar(
            select(func.count()).select_from(statement.order_by(None).subquery())
        )
        sort_column = getattr(model, query.sort.lstrip("-"), model.id)
        order = sort_column.desc() if query.sort.startswith("-") else sort_column
        rows = self.session.scalars(
            statement.order_by(order, model.id).limit(query.limit).offset(query.offset)
        ).unique()
        return list(rows), int(total or 0)

    def _get(self, model: type[Row], record_id: int, entity: str) -> Row:
        row = self.session.get(model, record_id)
        if row is None or not (self.user.is_admin or row.agent_id == self.user.id):
            raise RecordNotFound(entity, record_id)
        return row

    def _update(self, row: Row, version: int, changes: dict[str, Any]) -> Row:
        self._check_version(row, version)
        for name, value in changes.items():
            setattr(row, name, value)
        if self.session.is_modified(row):
            row.updated_at = clock.now()
        try:
            self._flush("policy_number")
        except StaleDataError as exc:
            # Someone saved between our read and our write; the caller reloads.
            raise StaleVersion(None) from exc
        # A new agent_id or customer_id leaves the loaded agent or customer
        # behind: loaded again when the answer names them.
        moved = [
            relation.key
            for relation in inspect(row).mapper.relationships
            if any(column.key in changes for column in relation.local_columns)
        ]
        if moved:
            self.session.expire(row, moved)
        return row

    @staticmethod
    def _check_version(row: Customer | Policy, version: int | None) -> None:
        if version is not None and version != row.version:
            raise StaleVersion(row)

    def _flush(self, unique_field: str) -> None:
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise InvalidField(
                unique_field, "is already used by another record"
            ) from exc

    def _agent_for(self, agent_id: int | None) -> int:
        if agent_id is None or agent_id == self.user.id:
            return self.user.id
        if not self.user.is_admin:
            raise InvalidField("agent_id", "only an admin can assign another agent")
        if self.session.get(User, agent_id) is None:
            raise InvalidField("agent_id", f"user {agent_id} does not exist")
        return agent_id

    def _customer_for_policy(self, customer_id: int) -> Customer:
        try:
            return self.get_customer(customer_id)
        except RecordNotFound as exc:
            # Another agent's customer is as absent as one never created.
            raise InvalidField(
                "customer_id", f"there is no customer {customer_id} in your book"
            ) from exc

    def lock_numbers(self, numbers: Iterable[str]) -> None:
        """On PostgreSQL, lock these policy numbers (by their folded form)
        until the transaction ends, in one order for every caller, so that
        two imports locking the same numbers wait for each other instead of
        deadlocking (a lock taken again is already held)."""
        lock_keys(self.session, _NUMBER_LOCKS, map(fold_number, numbers))

    def _check_policy_number(self, number: str, policy_id: int | None) -> None:
        """Refuse a number another policy has, in any case and alphabet:
        "ab-1" typed for a new policy is most likely "AB-1", and two would be
        told apart by no one. On PostgreSQL the number is locked until the
        transaction ends, so that two saving look-alikes at once are checked
        one after the other (SQLite has one writer at a time)."""
        key = fold_number(number)
        self.lock_numbers([number])
        clash = self.session.execute(
            select(Policy.id, Policy.agent_id, Policy.policy_number)
            .where(
                Policy.policy_number_key == key,
                Policy.id != (policy_id or 0),
            )
            .limit(1)
        ).first()
        if clash is None:
            return
        # Policy N, where the caller can look it up; another agent's is theirs.
        if self.user.is_admin or clash.agent_id == self.user.id:
            held = clash.policy_number
            written = (
                f", written {held!r}{_look_alike(number, held)}"
                if held != number
                else ""
            )
            raise NumberTaken(
                f"{number!r} is already used by policy {clash.id}{written}", clash.id
            )
        raise NumberTaken(f"{number!r} is already used", clash.id)

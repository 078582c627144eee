"""JSON API for customers and policies."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel

from sheetbridge.insurance.schemas import (
    MAX_ID,
    CustomerCreate,
    CustomerOut,
    CustomerUpdate,
    LineOfBusiness,
    Page,
    PolicyCreate,
    PolicyOut,
    PolicyStatus,
    PolicyUpdate,
    plain_text,
)
from sheetbridge.insurance.services import (
    Book,
    ListQuery,
    StaleVersion,
    customer_out,
    policy_out,
)
from sheetbridge.web.answers import JsonAnswer
from sheetbridge.web.bodies import JsonRoute
from sheetbridge.web.deps import CurrentUser, RuntimeDep

router = APIRouter(prefix="/api", tags=["records"], route_class=JsonRoute)

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
RefId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
CustomerId = Annotated[int, Path(ge=1, le=MAX_ID)]
PolicyId = Annotated[int, Path(ge=1, le=MAX_ID)]
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
# Query text is held to the same rule as body text: PostgreSQL refuses NUL.
PlainText = AfterValidator(plain_text)
Search = Annotated[str, Query(max_length=200), PlainText]
# Digits 0-9 only, as every record ID.
_ID_LIST = re.compile(r"[0-9]{1,9}(,[0-9]{1,9})*")


def _id_list(value: str) -> str:
    if not _ID_LIST.fullmatch(value):
        raise ValueError("must be record IDs separated by commas, like 3,17,42")
    return value


def _sort_by(columns: tuple[str, ...]) -> AfterValidator:
    """A check that query text names one of ``columns``, with ``-`` before
    it for the other way round, refused in plain words otherwise."""
    choices = f"{', '.join(columns[:-1])} or {columns[-1]}"

    def check(value: str) -> str:
        if value.removeprefix("-") not in columns:
            raise ValueError(
                f"must be {choices}, with - before it for the other way round"
            )
        return value

    return AfterValidator(check)


def _sort_query(columns: tuple[str, ...]) -> Any:
    return Query(json_schema_extra={"pattern": f"^-?({'|'.join(columns)})$"})


CUSTOMER_SORTS = ("id", "name", "city", "state", "updated_at")
POLICY_SORTS = (
    "id",
    "policy_number",
    "carrier",
    "premium",
    "status",
    "effective_date",
    "expiration_date",
    "updated_at",
)
Ids = Annotated[
    str,
    Query(
        max_length=5000,
        description="comma-separated",
        json_schema_extra={"pattern": f"^{_ID_LIST.pattern}$"},
    ),
    AfterValidator(_id_list),
]
CustomerSort = Annotated[str, _sort_query(CUSTOMER_SORTS), _sort_by(CUSTOMER_SORTS)]
PolicySort = Annotated[str, _sort_query(POLICY_SORTS), _sort_by(POLICY_SORTS)]


def _ids(value: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(",")) if value else ()


def _change(
    rt: RuntimeDep,
    user: CurrentUser,
    change: Callable[[Book], Any],
    current: Callable[[Book], BaseModel],
) -> Any:
    """Apply an edit based on a version; a stale one answers 409 with the record
    as it is now."""
    try:
        with rt.db.session() as session:
            changed = change(Book(session, user))
        return changed if isinstance(changed, Response) else JsonAnswer(changed)
    except StaleVersion:
        with rt.db.read_session() as session:
            now = current(Book(session, user)).model_dump(mode="json")
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={
            "detail": "this record was changed by someone else since you loaded it",
            "current": now,
        },
    )


def _deleted(delete: Callable[[], None]) -> Response:
    delete()
    return Response(status_code=204)


@router.get("/customers", response_model=Page[CustomerOut])
def list_customers(
    user: CurrentUser,
    rt: RuntimeDep,
    q: Search = "",
    agent_id: RefId = None,
    ids: Ids | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
    sort: CustomerSort = "name",
) -> Any:
    query = ListQuery(
        q=q, agent_id=agent_id, ids=_ids(ids), limit=limit, offset=offset, sort=sort
    )
    with rt.db.read_session() as session:
        rows, total = Book(session, user).list_customers(query)
        items = [customer_out(row) for row in rows]
    return JsonAnswer(Page(items=items, total=total, limit=limit, offset=offset))


@router.get("/customers/{customer_id}", response_model=CustomerOut)
def get_customer(customer_id: CustomerId, user: CurrentUser, rt: RuntimeDep) -> Any:
    with rt.db.read_session() as session:
        return JsonAnswer(customer_out(Book(session, user).get_customer(customer_id)))


@router.post("/customers", status_code=201, response_model=CustomerOut)
def create_customer(data: CustomerCreate, user: CurrentUser, rt: RuntimeDep) -> Any:
    with rt.db.session() as session:
        created = customer_out(Book(session, user).create_customer(data))
    return JsonAnswer(created, status_code=status.HTTP_201_CREATED)


@router.patch("/customers/{customer_id}", response_model=CustomerOut)
def update_customer(
    customer_id: CustomerId, data: CustomerUpdate, user: CurrentUser, rt: RuntimeDep
) -> Any:
    return _change(
        rt,
        user,
        lambda book: customer_out(book.update_customer(customer_id, data)),
        lambda book: customer_out(book.get_customer(customer_id)),
    )


@router.delete(
    "/customers/{customer_id}",
    status_code=204,
    response_model=None,
)
def delete_customer(
    customer_id: CustomerId,
    user: CurrentUser,
    rt: RuntimeDep,
    version: VersionQuery = None,
) -> Any:
    return _change(
        rt,
        user,
        lambda book: _deleted(lambda: book.delete_customer(customer_id, version)),
        lambda book: customer_out(book.get_customer(customer_id)),
    )


@router.get("/policies", response_model=Page[PolicyOut])
def list_policies(
    user: CurrentUser,
    rt: RuntimeDep,
    q: Search = "",
    status: PolicyStatus | None = None,
    line_of_business: LineOfBusiness | None = None,
    carrier: Annotated[str | None, Query(max_length=100), PlainText] = None,
    agent_id: RefId = None,
    customer_id: RefId = None,
    ids: Ids | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
    sort: PolicySort = "policy_number",
) -> Any:
    query = ListQuery(
        q=q,
        status=status,
        line_of_business=line_of_business,
        carrier=carrier,
        agent_id=agent_id,
        customer_id=customer_id,
        ids=_ids(ids),
        limit=limit,
        offset=offset,
        sort=sort,
    )
    with rt.db.read_session() as session:
        rows, total = Book(session, user).list_policies(query)
        items = [policy_out(row) for row in rows]
    return JsonAnswer(Page(items=items, total=total, limit=limit, offset=offset))


@router.get("/policies/{policy_id}", response_model=PolicyOut)
def get_policy(policy_id: PolicyId, user: CurrentUser, rt: RuntimeDep) -> Any:
    with rt.db.read_session() as session:
        return JsonAnswer(policy_out(Book(session, user).get_policy(policy_id)))


@router.post("/policies", status_code=201, response_model=PolicyOut)
def create_policy(data: PolicyCreate, user: CurrentUser, rt: RuntimeDep) -> Any:
    with rt.db.session() as session:
        created = policy_out(Book(session, user).create_policy(data))
    return JsonAnswer(created, status_code=status.HTTP_201_CREATED)


@router.patch("/policies/{policy_id}", response_model=PolicyOut)
def update_policy(
    policy_id: PolicyId, data: PolicyUpdate, user: CurrentUser, rt: RuntimeDep
) -> Any:
    return _change(
        rt,
        user,
        lambda book: policy_out(book.update_policy(policy_id, data)),
        lambda book: policy_out(book.get_policy(policy_id)),
    )


@router.delete("/policies/{policy_id}", status_code=204, response_model=None)
def delete_policy(
    policy_id: PolicyId, user: CurrentUser, rt: RuntimeDep, version: VersionQuery = None
) -> Any:
    return _change(
        rt,
        user,
        lambda book: _deleted(lambda: book.delete_policy(policy_id, version)),
        lambda book: policy_out(book.get_policy(policy_id)),
    )

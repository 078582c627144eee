"""A deterministic demo agency: logins, customers and policies.

Everything is generated from small hand-written lists with
``random.Random(seed)``, so the same seed (and the same ``today``) always
gives the same agency. The data deliberately contains the awkward values a
spreadsheet round trip must survive: ZIP codes and policy numbers with
leading zeros, phone numbers starting with ``+``, non-ASCII and apostrophes
in names, and notes starting with ``=`` or ``+`` that must stay text.
"""

from __future__ import annotations

import calendar
import random
import unicodedata
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import TypeAlias

from sqlalchemy import select
from sqlalchemy.orm import Session

from sheetbridge import clock
from sheetbridge.insurance.models import (
    LINES_OF_BUSINESS,
    POLICY_STATUSES,
    Customer,
    Policy,
    User,
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


DemoLogins: TypeAlias = list[tuple[str, str, str]]
"""``(username, password, role)`` of every demo login."""

ADMIN = ("admin", "Dana Whitfield", "admin")
AGENTS = (
    ("alice", "Alice Moreno", "agent"),
    ("bob", "Bob Lindqvist", "agent"),
    ("carol", "Carol Okafor", "agent"),
)
# Share of the book each agent handles (alice, bob, carol).
AGENT_WEIGHTS = (40, 35, 25)

FIRST_NAMES = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth "
    "William Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen "
    "Daniel Nancy Matthew Lisa Anthony Betty Mark Margaret Steven Sandra Paul "
    "Ashley Andrew Emily Kevin Donna Brian Michelle George Carol Edward Amanda "
    "Ronald Melissa Timothy Deborah Jason Stephanie Ryan Rebecca Jacob Laura "
    "Gary Sharon Nicholas Cynthia Eric Kathleen Luis Maria Carlos Ana Wei Mei "
    "Priya Raj Aisha Omar Keiko Hiroshi Tyrone Shanice Connor Siobhan Ingrid "
    "Lars Nadia Dmitri Fatima Yusuf"
)
LAST_NAMES = (
    *_words(
        "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez "
        "Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson "
        "Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
        "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores "
        "Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts "
        "Ouellette Thibodeau Pelletier Gagnon Kowalski Nowak Patel Shah Kim Park "
        "Chen Wang Tanaka Yamamoto Okafor Mensah Haddad Cohen Levy Sullivan "
        "McCarthy MacDonald Smith-Jones"
    ),
    "Van der Berg",
    "St. Pierre",
)
# Names a plain-ASCII pipeline would mangle; all of them are always present.
SPECIAL_NAMES = (
    "José Núñez",
    "Zoë O'Brien",
    "François Lefèvre",
    "Björn Åkesson",
    "Siobhán Ní Bhriain",
    "Nguyễn Thị Lan",
    "Łukasz Wiśniewski",
    "Renée D'Amato",
    "Chloé St-Onge",
    "Seán Ó Dálaigh",
    "Müller, Jürgen",
    "Ana María García-López",
)

STREETS = _words(
    "Main Elm Maple Oak Pine Cedar Washington Lake Hill Park Church School "
    "Water Pleasant Spring Highland Forest River Ocean Mill Union Franklin "
    "Chestnut Birch Summer Winter Harbor Meadow Ridge"
)
STREET_SUFFIXES = ("St", "Ave", "Rd", "Ln", "Dr", "Ct", "Way", "Blvd", "Pl")

# (city, state, ZIP, area code). New England ZIPs start with 0 on purpose.
PLACES = (
    ("Portland", "ME", "04101", "207"),
    ("Acton", "ME", "04001", "207"),
    ("Alfred", "ME", "04002", "207"),
    ("Biddeford", "ME", "04005", "207"),
    ("Kennebunk", "ME", "04043", "207"),
    ("Bangor", "ME", "04401", "207"),
    ("Lewiston", "ME", "04240", "207"),
    ("Burlington", "VT", "05401", "802"),
    ("Montpelier", "VT", "05602", "802"),
    ("Manchester", "NH", "03101", "603"),
    ("Portsmouth", "NH", "03801", "603"),
    ("Boston", "MA", "02108", "617"),
    ("Worcester", "MA", "01608", "508"),
    ("Springfield", "MA", "01103", "413"),
    ("Providence", "RI", "02903", "401"),
    ("Hartford", "CT", "06103", "860"),
    ("New Haven", "CT", "06510", "203"),
    ("Newark", "NJ", "07102", "973"),
    ("San Juan", "PR", "00901", "787"),
    ("Albany", "NY", "12207", "518"),
    ("Philadelphia", "PA", "19107", "215"),
    ("Columbus", "OH", "43215", "614"),
    ("Chicago", "IL", "60601", "312"),
    ("Minneapolis", "MN", "55401", "612"),
    ("Atlanta", "GA", "30303", "404"),
    ("Raleigh", "NC", "27601", "919"),
    ("Nashville", "TN", "37203", "615"),
    ("Miami", "FL", "33130", "305"),
    ("Austin", "TX", "78701", "512"),
    ("Denver", "CO", "80202", "303"),
    ("Boise", "ID", "83702", "208"),
    ("Albuquerque", "NM", "87102", "505"),
    ("Phoenix", "AZ", "85004", "602"),
    ("Seattle", "WA", "98101", "206"),
    ("San Diego", "CA", "92101", "619"),
)
# Local agency: most customers live near Portland, Maine.
PLACE_WEIGHTS = tuple(6 if place[1] == "ME" else 2 for place in PLACES)

EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example")

NOTES = (
    "Prefers email over phone.",
    "Call after 5pm on weekdays.",
    "Referred by a current client.",
    "Asked about bundling home and auto.",
    "Spouse also insured with us.",
    "Renewal review scheduled for spring.",
    "Claim filed last year (hail damage), closed.",
    "Owns a small bakery; interested in commercial coverage.",
    "Teen driver added in the fall.",
    "Sent quote for umbrella policy; awaiting reply.",
    "Moving in the summer — update address.",
    "Pays annually by check.",
    "Speaks Spanish at home; prefers bilingual agent.",
    "Line one\nLine two: multi-line note.",
    "Inner  double  spaces  stay as typed.",
)
# Notes a spreadsheet would take for formulas unless written as text.
FORMULA_LIKE_NOTES = (
    "=VIP= renews every March, handle personally",
    "+1 referral from the Gagnon family",
    "-5% loyalty discount promised at renewal",
    "@home most afternoons",
    "=SUM(A1:A3) is what she typed in her own sheet",
)

CARRIERS = (
    "Granite Mutual",
    "Harborline Insurance",
    "Pinecrest Casualty",
    "Bluewater General",
    "Summit Ridge Assurance",
    "Northfield Fire & Marine",
    "Lakeshore Life",
    "Keystone Indemnity",
    "Red Oak Underwriters",
    "Meridian Shield",
)

# line -> (policy-number prefix, weight, premium range, possible terms in months)
LINE_PROFILES: dict[str, tuple[str, int, tuple[int, int], tuple[int, ...]]] = {
    "auto": ("AUT", 30, (600, 2400), (6, 12)),
    "home": ("HOM", 22, (800, 3500), (12,)),
    "renters": ("REN", 8, (120, 450), (6, 12)),
    "life": ("LIF", 10, (300, 3000), (12,)),
    "health": ("HLT", 6, (2400, 9600), (12,)),
    "umbrella": ("UMB", 8, (150, 600), (12,)),
    "commercial": ("COM", 10, (2000, 25000), (12,)),
    "workers-comp": ("WCP", 6, (1500, 18000), (12,)),
}
assert set(LINE_PROFILES) == set(LINES_OF_BUSINESS)

# Status mix; "active" dominates like a real book of business.
STATUS_WEIGHTS = {
    "active": 72,
    "pending": 7,
    "cancelled": 7,
    "expired": 8,
    "non-renewed": 6,
}
assert set(STATUS_WEIGHTS) == set(POLICY_STATUSES)


def has_any_user(session: Session) -> bool:
    """Whether the database holds at least one user (demo or real)."""
    return session.scalar(select(User.id).limit(1)) is not None


def seed_demo(
    session: Session,
    *,
    seed: int = 7,
    customers: int = 300,
    policies: int = 800,
    password_hasher: Callable[[str], str],
    today: date | None = None,
) -> DemoLogins:
    """Insert a demo agency and return its logins.

    Adds one admin (``admin`` / ``admin-demo``), three agents (``alice``,
    ``bob``, ``carol`` with passwords ``<name>-demo``), ``customers``
    customers spread over the agents and ``policies`` policies (each customer
    gets at least one while there are enough policies; each policy belongs to
    its customer's agent). The same ``seed`` and ``today`` (default: the
    clock's current date) always give the same data. The session is flushed,
    not committed.
    """
    rng = random.Random(seed)
    today = today or clock.now().date()
    logins: DemoLogins = []
    users: list[User] = []
    for username, full_name, role in (ADMIN, *AGENTS):
        password = f"{username}-demo"
        users.append(
            User(
                username=username,
                full_name=full_name,
                role=role,
                password_hash=password_hasher(password),
            )
        )
        logins.append((username, password, role))
    session.add_all(users)
    session.flush()
    agent_ids = [user.id for user in users if user.role == "agent"]

    customer_rows = _customers(rng, customers, agent_ids)
    session.add_all(customer_rows)
    session.flush()

    session.add_all(_policies(rng, policies, customer_rows, today))
    session.flush()
    return logins


def _customers(rng: random.Random, count: int, agent_ids: list[int]) -> list[Customer]:
    names = _names(rng, count)
    formula_notes = list(FORMULA_LIKE_NOTES)
    rows: list[Customer] = []
    for index, name in enumerate(names):
        city, state, zip_code, area = rng.choices(PLACES, PLACE_WEIGHTS)[0]
        if formula_notes and index % 7 == 3:
            notes = formula_notes.pop(0)
        elif rng.random() < 0.3:
            notes = rng.choice(NOTES)
        else:
            notes = ""
        rows.append(
            Customer(
                name=name,
                email=_email(rng, name) if rng.random() < 0.92 else "",
                phone=_phone(rng, area) if rng.random() < 0.95 else "",
                address=_street(rng),
                city=city,
                state=state,
                zip_code=zip_code,
                date_of_birth=(
                    _random_date(rng, date(1940, 1, 1), date(2005, 12, 31))
                    if rng.random() < 0.97
                    else None
                ),
                notes=notes,
                agent_id=rng.choices(agent_ids, AGENT_WEIGHTS[: len(agent_ids)])[0],
            )
        )
    return rows


def _names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct names, the special (non-ASCII) ones spread among them."""
    taken: set[str] = set()
    names: list[str] = []
    while len(names) < max(0, count - len(SPECIAL_NAMES)):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if name not in taken and name not in SPECIAL_NAMES:
            taken.add(name)
            names.append(name)
    for special in SPECIAL_NAMES[:count]:
        names.insert(rng.randint(0, len(names)), special)
    return names


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    plain = plain.replace("Ł", "L").replace("ł", "l").replace("ø", "o")
    return "".join(ch for ch in plain.lower() if ch.isascii() and ch.isalnum())


def _email(rng: random.Random, name: str) -> str:
    if "," in name:  # "Last, First"
        last, first = (part.strip() for part in name.split(",", 1))
    else:
        first, _, last = name.partition(" ")
    first, last = _ascii(first), _ascii(last)
    style = rng.randrange(5)
    if style == 0:
        local = f"{first}.{last}"
    elif style == 1:
        local = f"{first[0]}{last}"
    elif style == 2:
        local = f"{first}_{last}{rng.randint(1, 99)}"
    elif style == 3:
        local = f"{last}.{first[0]}"
    else:
        local = f"{first}{rng.randint(1950, 2005)}"
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _phone(rng: random.Random, area: str) -> str:
    line = f"01{rng.randint(0, 99):02d}"  # 555-0100..0199 is reserved fiction
    style = rng.randrange(4)
    if style == 0:
        return f"+1 555-{line}"
    if style == 1:
        return f"({area}) 555-{line}"
    if style == 2:
        return f"{area}-555-{line}"
    return f"{area}.555.{line}"


def _street(rng: random.Random) -> str:
    address = (
        f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_SUFFIXES)}"
    )
    if rng.random() < 0.12:
        address += f", Apt {rng.randint(1, 40)}{rng.choice('ABCD')}"
    return address


def _random_date(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _add_months(start: date, months: int) -> date:
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return date(year, month, day)


def _policy_number(rng: random.Random, prefix: str, taken: set[str]) -> str:
    while True:
        if rng.random() < 0.12:
            number = f"00{rng.randint(0, 999_999):06d}"
        else:
            number = f"{prefix}-{rng.randint(1, 999_999):06d}"
        if number not in taken:
            taken.add(number)
            return number


def _policy_dates(
    rng: random.Random, status: str, term: int, today: date
) -> tuple[date, date]:
    """Effective and expiration dates that make sense for ``status``."""
    three_years_ago = _add_months(today, -36)
    if status == "active":
        # In force today: started within the current term.
        start = _random_date(rng, _add_months(today, -term) + timedelta(1), today)
    elif status == "pending":
        start = _random_date(rng, today - timedelta(14), today + timedelta(60))
    elif status == "cancelled":
        start = _random_date(rng, three_years_ago, today)
    else:  # expired, non-renewed: the whole term lies in the past
        latest = _add_months(today, -term) - timedelta(1)
        start = _random_date(rng, min(three_years_ago, latest), latest)
    return start, _add_months(start, term)


def _policies(
    rng: random.Random, count: int, customers: list[Customer], today: date
) -> list[Policy]:
    lines = list(LINE_PROFILES)
    line_weights = [LINE_PROFILES[line][1] for line in lines]
    statuses = list(STATUS_WEIGHTS)
    status_weights = list(STATUS_WEIGHTS.values())
    # A life insurer writes only life and health.
    carriers = {
        line: [
            name
            for name in CARRIERS
            if "Life" not in name or line in ("life", "health")
        ]
        for line in lines
    }
    taken: set[str] = set()
    rows: list[Policy] = []
    if not customers:
        return rows
    for index in range(count):
        customer = customers[index] if index < len(customers) else rng.choice(customers)
        line = rng.choices(lines, line_weights)[0]
        prefix, _, (low, high), terms = LINE_PROFILES[line]
        term = rng.choice(terms)
        status = rng.choices(statuses, status_weights)[0]
        effective, expiration = _policy_dates(rng, status, term, today)
        premium = Decimal(rng.randint(low * 100, high * 100)) / 100
        rows.append(
            Policy(
                policy_number=_policy_number(rng, prefix, taken),
                customer_id=customer.id,
                carrier=rng.choice(carriers[line]),
                line_of_business=line,
                effective_date=effective,
                expiration_date=expiration,
                premium=premium.quantize(Decimal("0.01")),
                status=status,
                agent_id=customer.agent_id,
            )
        )
    return rows

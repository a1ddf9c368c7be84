"""Field-value generators: names, dates, addresses, numbers, companies, URLs, MRZ lines.

Each generator is `gen(rng) -> str`, ASCII only (the DejaVu fonts cover it), looked up by name in
`GENERATORS` so document templates can name their fields' generators as plain strings.
"""
from __future__ import annotations

import numpy as np

FIRST = (
    "James Mary Wei Li Anna Omar Sofia Lucas Mei Ivan Elena Hugo Aisha Kenji Nora Pablo Yara Tomas "
    "Lin Chen Maria David Sara Ahmed Emma Noah Leila Mateo Hana Jonas Ines Ravi Olga Felix Zara Marco "
    "Yuki Amir Clara Diego Fatima Lars Nadia Oscar Priya Quinn Rosa Sami Tara Umar Vera Xin Yosef Zoe"
).split()
LAST = (
    "Smith Wang Garcia Muller Rossi Kim Tanaka Silva Novak Dubois Ivanova Khan Lopez Chen Zhang Liu "
    "Nguyen Kowalski Jensen Costa Haddad Okafor Petrov Schmidt Moreau Yilmaz Suzuki Santos Berg Huang "
    "Fischer Romero Larsen Sato Andersen Weber Klein Torres Ali Park Meyer Horvat Lindqvist Murphy Sousa"
).split()
STREETS = (
    "Elm Oak Maple Cedar Pine Birch Willow River Lake Hill Park Station Market Harbor Garden Spring "
    "Mill Church Bridge Forest Sunset Union Liberty Orchard Meadow Valley Ridge Canal Castle Victoria"
).split()
SUFFIX = "St Rd Ave Lane Blvd Way Ct Pl Dr".split()
CITIES = (
    "Springfield Riverton Lakeside Fairview Greenville Kingston Ashford Brookfield Clearwater Eastport "
    "Hillcrest Marlow Newbury Oakdale Portland Redwood Salem Westfield Yorkton Zenith Harbin Suzhou "
    "Lyon Porto Graz Turku Brno Gdansk Leeds Malmo"
).split()
NATIONS = "CHN USA FRA DEU ITA ESP JPN KOR BRA IND GBR CAN AUS NLD SWE POL TUR EGY NGA MEX".split()
WORDS = (
    "bright river north star blue lotus golden harbor swift peak green field silver stone urban nova "
    "red maple cloud sun ocean iron crystal eagle pixel market trade home city open light fresh"
).split()
COMPANY = "Trading Technology Logistics Foods Textiles Holdings Consulting Media Energy Machinery".split()
TLDS = "com net org io cn shop info biz co".split()
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def name(rng):
    return f"{_pick(rng, FIRST)} {_pick(rng, LAST)}"


def surname(rng):
    return _pick(rng, LAST).upper()


def given(rng):
    return _pick(rng, FIRST).upper()


def sex(rng):
    return _pick(rng, ("M", "F"))


def nationality(rng):
    return _pick(rng, NATIONS)


def _date(rng, y0: int, y1: int) -> str:
    y, m, d = int(rng.integers(y0, y1)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return f"{y:04d}-{m:02d}-{d:02d}" if rng.random() < 0.6 else f"{d:02d}.{m:02d}.{y:04d}"


def birth_date(rng):
    return _date(rng, 1950, 2006)


def issue_date(rng):
    return _date(rng, 2012, 2024)


def expiry_date(rng):
    return _date(rng, 2025, 2036)


def address(rng):
    return f"{int(rng.integers(1, 999))} {_pick(rng, STREETS)} {_pick(rng, SUFFIX)}, {_pick(rng, CITIES)}"


def short_address(rng):
    return f"{int(rng.integers(1, 99))} {_pick(rng, STREETS)} {_pick(rng, SUFFIX)}"


def city(rng):
    return _pick(rng, CITIES)


def id_number(rng):
    tail = "X" if rng.random() < 0.1 else _digits(rng, 1)
    return _digits(rng, 17) + tail


def doc_number(rng):
    return _pick(rng, LETTERS) + _pick(rng, LETTERS) + _digits(rng, 7)


def licence_class(rng):
    return _pick(rng, ("A1", "A2", "B", "B1", "C1", "C", "D", "BE"))


def permit_type(rng):
    return _pick(rng, ("WORK", "STUDY", "FAMILY", "PERMANENT", "BUSINESS"))


def company(rng):
    a, b = _pick(rng, WORDS).title(), _pick(rng, WORDS).title()
    return f"{a} {b} {_pick(rng, COMPANY)} Co."


def uscc(rng):
    """An 18-character unified social credit code, e.g. 91310115MA1K3XYZ4P."""
    chars = "0123456789" + LETTERS
    return "91" + _digits(rng, 6) + "".join(_pick(rng, chars) for _ in range(10))


def capital(rng):
    return f"{int(rng.integers(1, 500)) * 10_000:,} CNY"


def area(rng):
    return f"{rng.uniform(30, 250):.1f} m2"


def usage(rng):
    return _pick(rng, ("Residential", "Commercial", "Office", "Industrial", "Storage"))


def scope(rng):
    return f"{_pick(rng, WORDS)} goods, {_pick(rng, WORDS)} services".capitalize()


def company_type(rng):
    return _pick(rng, ("Limited liability", "Joint stock", "Sole proprietor", "Partnership"))


def authority(rng):
    return f"{_pick(rng, CITIES)} Bureau"


def mrz(rng):
    """One 30-character machine-readable-zone line (monospace font)."""
    body = f"P<{nationality(rng)}{surname(rng)}<<{given(rng)}"
    return (body + "<" * 30)[:30]


def mrz_numbers(rng):
    return (doc_number(rng) + _digits(rng, 1) + nationality(rng) + _digits(rng, 7) + sex(rng) + _digits(rng, 7) + "<" * 30)[:30]


def url(rng):
    host = _pick(rng, WORDS) + _pick(rng, ("", "-")) + _pick(rng, WORDS)
    path = _pick(rng, ("", "/join", "/go", "/shop", "/x" + _digits(rng, 3), "/meet"))
    pre = _pick(rng, ("www.", "https://", "http://www.", ""))
    return f"{pre}{host}.{_pick(rng, TLDS)}{path}"


GENERATORS = {
    f.__name__: f
    for f in (
        name, surname, given, sex, nationality, birth_date, issue_date, expiry_date, address,
        short_address, city, id_number, doc_number, licence_class, permit_type, company, uscc,
        capital, area, usage, scope, company_type, authority, mrz, mrz_numbers, url,
    )
}


def fake_value(gen_name: str, rng: np.random.Generator) -> str:
    """A value from the named generator."""
    return GENERATORS[gen_name](rng)

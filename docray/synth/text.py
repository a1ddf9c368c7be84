"""Field-value generators: names, dates, addresses, numbers, companies, URLs, MRZ lines, and
Chinese names, sexes, ethnic groups, dates and addresses (`zh_*`).

Each generator is `gen(rng) -> str`, looked up by name in `GENERATORS` so document templates can
name their fields' generators as plain strings (`value:` in a template file, docray.doctypes). The
Latin ones are ASCII (the DejaVu fonts cover it); the `zh_*` ones need a CJK font (cjk-sans).
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


ZH_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟龙万段雷钱汤尹黎易常武乔贺赖龚文"
ZH_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国红梅玉兰志文斌辉宇浩然子涵欣怡思雨梓萱佳琪晨阳俊博"
ZH_ETHNIC = ("汉",) * 8 + ("壮", "回", "满", "维吾尔", "苗", "彝", "土家", "藏", "蒙古", "朝鲜")  # Han most often
ZH_CITIES = "北京市 上海市 天津市 重庆市 广州市 深圳市 杭州市 南京市 成都市 武汉市 西安市 苏州市 长沙市 沈阳市".split()
ZH_DISTRICTS = "朝阳区 海淀区 浦东新区 天河区 西湖区 鼓楼区 武侯区 江汉区 雁塔区 姑苏区 和平区 南山区".split()
ZH_ROADS = "人民 建国 解放 中山 和平 长江 黄河 光明 新华 文化 幸福 东风 青年 友谊 胜利 南京".split()


def zh_name(rng):
    """A Chinese name: one surname character and one or two given-name characters, e.g. 王伟, 李欣怡."""
    return _pick(rng, ZH_SURNAMES) + "".join(_pick(rng, ZH_GIVEN) for _ in range(int(rng.integers(1, 3))))


def zh_sex(rng):
    return _pick(rng, ("男", "女"))


def zh_ethnicity(rng):
    return _pick(rng, ZH_ETHNIC)


def zh_birth_date(rng):
    """e.g. 1987年3月12日."""
    return f"{int(rng.integers(1950, 2006))}年{int(rng.integers(1, 13))}月{int(rng.integers(1, 29))}日"


def zh_address(rng):
    """e.g. 北京市朝阳区建国路88号."""
    road = _pick(rng, ZH_ROADS) + _pick(rng, ("路", "街", "大道"))
    return f"{_pick(rng, ZH_CITIES)}{_pick(rng, ZH_DISTRICTS)}{road}{int(rng.integers(1, 300))}号"


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
        zh_name, zh_sex, zh_ethnicity, zh_birth_date, zh_address,
    )
}


def fake_value(gen_name: str, rng: np.random.Generator) -> str:
    """A value from the named generator."""
    if gen_name not in GENERATORS:
        raise ValueError(f"unknown value generator {gen_name!r}; one of {sorted(GENERATORS)}")
    return GENERATORS[gen_name](rng)

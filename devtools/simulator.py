"""Seeded synthetic lead engagement events: training history, demo traffic and load for leadscore.

A population of leads with firmographic personas and a latent, drifting buying intent produces events in
the wire format of DESIGN.md "Contract". Same spec and seed, same events, byte for byte.

How a lead behaves:

* It is created (a first ``profile_update``) at a staggered time in the period; web-sourced leads then
  fill the form that created them and look around the site.
* Its latent intent in [0, 1] drifts around its persona's resting level and rises in occasional
  *buying phases* (a warm-up over days, then a slow fade): the lead converts or goes cold again.
* Intent drives web sessions and what they look at (pricing, docs, case studies), email opens and
  clicks, webinar attendance and demo requests.
* Conversion has a daily hazard that recent demo requests, pricing views, clicks and webinar
  attendance raise strongly, scaled by the persona's ability to buy and the contact's authority;
  a small base hazard makes some quiet leads convert too (deals closed offline).
* Every lead on the list receives the shared campaign calendar (a Tuesday newsletter, a Thursday
  nurture mail that every other week invites to a webinar) until it unsubscribes or its address
  bounces. After ``converted`` a lead produces no more events.
* About 0.5% of events have a type outside the documented list (``chat_started``, ``video_played``).

Memory stays bounded by the number of leads, not events: each lead is a lazy day-by-day generator and
the population is a ``heapq.merge`` of them.
"""

from __future__ import annotations

import gzip
import heapq
import io
import itertools
import math
import random
from array import array
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)

PROFILE_UPDATE: Final = "profile_update"
EMAIL_SEND: Final = "email_send"
EMAIL_OPEN: Final = "email_open"
EMAIL_CLICK: Final = "email_click"
EMAIL_UNSUBSCRIBE: Final = "email_unsubscribe"
EMAIL_BOUNCE: Final = "email_bounce"
PAGE_VIEW: Final = "page_view"
FORM_FILL: Final = "form_fill"
WEBINAR_REGISTER: Final = "webinar_register"
WEBINAR_ATTEND: Final = "webinar_attend"
DEMO_REQUEST: Final = "demo_request"
CONVERTED: Final = "converted"

KNOWN_EVENT_TYPES: Final = (
    PROFILE_UPDATE, EMAIL_SEND, EMAIL_OPEN, EMAIL_CLICK, EMAIL_UNSUBSCRIBE, EMAIL_BOUNCE,
    PAGE_VIEW, FORM_FILL, WEBINAR_REGISTER, WEBINAR_ATTEND, DEMO_REQUEST, CONVERTED,
)  # fmt: skip
# Types a real tracker might add later; the service must accept and count them.
UNKNOWN_EVENT_TYPES: Final = ("chat_started", "video_played")

Event = dict[str, Any]
# (ts_ms, lead index, per-lead sequence, event): unique per event, so merging never compares dicts.
_Entry = tuple[int, int, int, Event]
# (ts_ms, generation order, type, properties): a lead's not-yet-emitted events.
_Pending = tuple[int, int, str, dict[str, Any]]

SITE: Final = "https://www.example.com"


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate: how many leads over how many days from `start`, and the seed."""

    leads: int = 1000
    days: float = 90.0
    seed: int = 7
    start: datetime = datetime(2026, 8, 1, tzinfo=UTC)  # history start
    lead_id_prefix: str = "L-"

    def __post_init__(self) -> None:
        if self.leads < 0:
            raise ValueError(f"leads must be >= 0, got {self.leads}")
        if not self.days > 0:
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {self.seed}")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware, e.g. datetime(2026, 8, 1, tzinfo=UTC)")


@dataclass(frozen=True)
class Weighted:
    """Values with relative weights; cumulative weights are precomputed so a draw is one bisect."""

    values: tuple[str, ...]
    cum_weights: tuple[float, ...]

    @classmethod
    def of(cls, weights: Mapping[str, float]) -> Weighted:
        return cls(tuple(weights), tuple(itertools.accumulate(weights.values())))

    @classmethod
    def uniform(cls, *values: str) -> Weighted:
        return cls.of(dict.fromkeys(values, 1.0))

    def draw(self, rng: random.Random) -> str:
        return self.values[bisect(self.cum_weights, rng.random() * self.cum_weights[-1])]


@dataclass(frozen=True)
class Persona:
    """A kind of lead: who they are (firmographics) and how they behave."""

    name: str
    share: float  # of the population
    intent_logit: float  # resting latent intent, in logit space
    buying_phase_rate: float  # chance per day that a buying phase starts
    arrives_buying: float  # chance the lead is created mid-evaluation (inbound)
    web_sessions: float  # sessions per day at zero intent, before the intent lift
    email_affinity: float  # scales open and click probabilities
    page_bias: tuple[float, ...]  # added to the page-category mix whatever the intent
    close_rate: float  # scales the conversion hazard: can this kind of lead buy at all
    bad_address_rate: float  # chance the email address hard-bounces
    company_sizes: Weighted
    job_titles: Weighted
    industries: Weighted
    lead_sources: Weighted
    plan: str
    amount_range: tuple[float, float]  # yearly contract value, USD


COMPANY_SIZES: Final = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+")
PAGE_CATEGORIES: Final = ("home", "blog", "product", "pricing", "docs", "case_study", "careers")
_HOME, _BLOG, _PRODUCT, _PRICING, _DOCS, _CASE_STUDY, _CAREERS = range(len(PAGE_CATEGORIES))
# What a cold visitor reads, and how the mix moves as intent rises: buyers read pricing, docs and case
# studies rather than blog posts and job ads.
_COLD_PAGE_MIX: Final = (0.20, 0.36, 0.14, 0.05, 0.10, 0.05, 0.10)
_INTENT_PAGE_SHIFT: Final = (-0.05, -0.28, 0.08, 0.22, 0.06, 0.10, -0.08)
_NO_BIAS: Final = (0.0,) * len(PAGE_CATEGORIES)
_DEMO_PAGES: Final = frozenset({_PRODUCT, _PRICING, _CASE_STUDY})  # pages with a "book a demo" button

_CATEGORY_URLS: Final = tuple(
    tuple(f"{SITE}{path}" for path in paths)
    for paths in (
        ("/",),
        tuple(f"/blog/{slug}" for slug in (
            "lead-scoring-101", "intent-data-explained", "b2b-funnel-benchmarks",
            "email-deliverability-checklist", "attribution-models", "abm-playbook", "state-of-martech",
        )),
        tuple(f"/product/{page}" for page in ("scoring", "segments", "integrations", "api", "real-time")),
        ("/pricing", "/pricing/enterprise", "/pricing/compare"),
        tuple(f"/docs/{page}" for page in ("quickstart", "events", "api-reference", "sso", "security")),
        tuple(f"/customers/{name}" for name in ("northwind", "globex", "initech", "umbrella", "hooli")),
        ("/careers", "/careers/backend-engineer", "/careers/account-executive"),
    )
)  # fmt: skip

# (weight, UTC offset in hours): people browse during their own working day.
_COUNTRIES: Final[Mapping[str, tuple[float, float]]] = {
    "US": (0.34, -6.0), "GB": (0.10, 0.0), "DE": (0.08, 1.0), "FR": (0.06, 1.0), "IN": (0.10, 5.5),
    "BR": (0.06, -3.0), "CA": (0.05, -5.0), "AU": (0.04, 10.0), "NL": (0.03, 1.0), "ES": (0.03, 1.0),
    "JP": (0.03, 9.0), "SG": (0.02, 8.0), "SE": (0.02, 1.0), "MX": (0.02, -6.0), "ZA": (0.02, 2.0),
}  # fmt: skip
_COUNTRY_CHOICE: Final = Weighted.of({code: weight for code, (weight, _) in _COUNTRIES.items()})

# Who signs: a VP or founder closes a deal, an engineer has to convince someone first.
_TITLE_AUTHORITY: Final[Mapping[str, float]] = {
    "CIO": 1.4, "CTO": 1.3, "CEO": 1.4, "Founder": 1.4, "Co-founder": 1.3, "Owner": 1.3,
    "VP Marketing": 1.3, "VP Sales": 1.3, "Head of Operations": 1.2, "Head of Growth": 1.2,
    "Director of IT": 1.1, "Director of Marketing": 1.1, "Procurement Manager": 1.2,
    "Marketing Manager": 0.9, "Engineering Manager": 0.9, "Product Manager": 0.8,
}  # fmt: skip
_DEFAULT_AUTHORITY: Final = 0.6

_EVERYONE_SIZES: Final = Weighted.of(
    {"1-10": 0.15, "11-50": 0.2, "51-200": 0.25, "201-1000": 0.2, "1001-5000": 0.12, "5000+": 0.08}
)
_BROAD_INDUSTRIES: Final = Weighted.of(
    {"software": 0.3, "finance": 0.1, "healthcare": 0.08, "retail": 0.1, "manufacturing": 0.08,
     "education": 0.06, "media": 0.08, "consulting": 0.08, "logistics": 0.06, "telecom": 0.06}
)  # fmt: skip


def _bias(**by_category: float) -> tuple[float, ...]:
    return tuple(by_category.get(name, 0.0) for name in PAGE_CATEGORIES)


PERSONAS: Final = (
    Persona(
        name="enterprise_buyer", share=0.16, intent_logit=-2.3, buying_phase_rate=0.012,
        arrives_buying=0.12, web_sessions=0.22, email_affinity=0.9, page_bias=_bias(case_study=0.03),
        close_rate=1.0, bad_address_rate=0.02,
        company_sizes=Weighted.of({"201-1000": 0.2, "1001-5000": 0.45, "5000+": 0.35}),
        job_titles=Weighted.uniform(
            "VP Marketing", "Director of IT", "Head of Operations", "CIO", "VP Sales", "Procurement Manager"
        ),
        industries=Weighted.of(
            {"finance": 0.22, "healthcare": 0.18, "manufacturing": 0.16, "retail": 0.14, "software": 0.12,
             "insurance": 0.1, "telecom": 0.08}
        ),
        lead_sources=Weighted.of(
            {"event": 0.25, "outbound": 0.3, "webinar": 0.2, "referral": 0.1, "organic": 0.1, "paid_search": 0.05}
        ),
        plan="enterprise", amount_range=(18_000.0, 120_000.0),
    ),
    Persona(
        name="midmarket_champion", share=0.24, intent_logit=-2.1, buying_phase_rate=0.014,
        arrives_buying=0.1, web_sessions=0.32, email_affinity=1.1, page_bias=_NO_BIAS,
        close_rate=0.9, bad_address_rate=0.02,
        company_sizes=Weighted.of({"51-200": 0.55, "201-1000": 0.45}),
        job_titles=Weighted.uniform(
            "Marketing Manager", "Head of Growth", "Engineering Manager", "Product Manager",
            "Director of Marketing", "CTO",
        ),
        industries=Weighted.of(
            {"software": 0.35, "media": 0.15, "retail": 0.15, "finance": 0.15, "education": 0.1, "logistics": 0.1}
        ),
        lead_sources=Weighted.of(
            {"organic": 0.3, "paid_search": 0.2, "webinar": 0.2, "referral": 0.15, "event": 0.1, "outbound": 0.05}
        ),
        plan="pro", amount_range=(3_000.0, 24_000.0),
    ),
    Persona(
        name="smb_founder", share=0.22, intent_logit=-2.2, buying_phase_rate=0.012,
        arrives_buying=0.1, web_sessions=0.28, email_affinity=0.8, page_bias=_bias(pricing=0.03),
        close_rate=0.8, bad_address_rate=0.03,
        company_sizes=Weighted.of({"1-10": 0.6, "11-50": 0.4}),
        job_titles=Weighted.uniform("Founder", "CEO", "Owner", "Co-founder", "CTO"),
        industries=Weighted.of(
            {"software": 0.35, "retail": 0.2, "media": 0.15, "consulting": 0.2, "hospitality": 0.1}
        ),
        lead_sources=Weighted.of(
            {"organic": 0.35, "paid_search": 0.35, "referral": 0.2, "webinar": 0.05, "event": 0.05}
        ),
        plan="starter", amount_range=(300.0, 3_000.0),
    ),
    Persona(
        name="practitioner", share=0.16, intent_logit=-2.6, buying_phase_rate=0.006,
        arrives_buying=0.04, web_sessions=0.34, email_affinity=0.7, page_bias=_bias(docs=0.12, blog=0.05),
        close_rate=0.3, bad_address_rate=0.03,
        company_sizes=_EVERYONE_SIZES,
        job_titles=Weighted.uniform(
            "Engineer", "Data Analyst", "Developer", "Marketing Specialist", "Data Scientist"
        ),
        industries=_BROAD_INDUSTRIES,
        lead_sources=Weighted.of(
            {"organic": 0.5, "paid_search": 0.15, "webinar": 0.15, "referral": 0.1, "event": 0.1}
        ),
        plan="pro", amount_range=(1_500.0, 9_000.0),
    ),
    Persona(
        name="student_researcher", share=0.12, intent_logit=-3.5, buying_phase_rate=0.001,
        arrives_buying=0.0, web_sessions=0.28, email_affinity=0.5,
        page_bias=_bias(blog=0.1, docs=0.08, careers=0.08), close_rate=0.03, bad_address_rate=0.06,
        company_sizes=Weighted.of({"1-10": 0.2, "1001-5000": 0.3, "5000+": 0.5}),
        job_titles=Weighted.uniform("Student", "PhD Candidate", "Researcher", "Professor"),
        industries=Weighted.of({"education": 0.85, "research": 0.15}),
        lead_sources=Weighted.of({"organic": 0.7, "webinar": 0.2, "event": 0.1}),
        plan="starter", amount_range=(100.0, 600.0),
    ),
    Persona(
        # Looks like a buyer to a points score (pricing, product, case studies) but never means to buy.
        name="competitor_tire_kicker", share=0.10, intent_logit=-2.8, buying_phase_rate=0.0,
        arrives_buying=0.0, web_sessions=0.4, email_affinity=0.9,
        page_bias=_bias(pricing=0.22, product=0.1, case_study=0.06), close_rate=0.02, bad_address_rate=0.08,
        company_sizes=_EVERYONE_SIZES,
        job_titles=Weighted.uniform(
            "Product Marketing Manager", "Analyst", "Consultant", "Competitive Intelligence Lead", "Sales Engineer"
        ),
        industries=Weighted.of({"software": 0.7, "consulting": 0.3}),
        lead_sources=Weighted.of({"organic": 0.4, "paid_search": 0.3, "webinar": 0.2, "event": 0.1}),
        plan="starter", amount_range=(300.0, 2_000.0),
    ),
)  # fmt: skip


def _page_mix_table(persona: Persona) -> tuple[tuple[float, ...], ...]:
    """Cumulative page-category weights for each intent level, so a session's mix is a lookup."""
    columns = tuple(zip(_COLD_PAGE_MIX, _INTENT_PAGE_SHIFT, persona.page_bias, strict=True))
    table = []
    for level in range(_PAGE_MIX_LEVELS + 1):
        intent = level / _PAGE_MIX_LEVELS
        weights = (max(0.005, cold + intent * shift + bias) for cold, shift, bias in columns)
        table.append(tuple(itertools.accumulate(weights)))
    return tuple(table)


_PAGE_MIX_LEVELS: Final = 100  # intent steps of 0.01 are finer than anything the mix can show
_PAGE_MIX: Final = {persona.name: _page_mix_table(persona) for persona in PERSONAS}
_PERSONA_CHOICE: Final = Weighted.of({persona.name: persona.share for persona in PERSONAS})
_PERSONA_BY_NAME: Final = {persona.name: persona for persona in PERSONAS}

# Latent intent walk (logit space): keeps 90% of yesterday's deviation, so it wanders but returns.
_WALK_KEEP: Final = 0.9
_WALK_STEP: Final = 0.35
_WALK_SPREAD: Final = _WALK_STEP / math.sqrt(1 - _WALK_KEEP**2)  # the walk's stationary std-dev
_WEEKEND_ACTIVITY: Final = 0.35

_OPEN_MEDIAN_MS: Final = 3 * HOUR_MS
_PROFILE_CHANGE_RATE: Final = 0.002  # per day: promotions, company growth
_UNKNOWN_TYPE_RATE: Final = 0.0075  # per page view; lands near 0.5% of all events

# Conversion hazard per day; see LeadJourney._maybe_convert.
_BASE_HAZARD: Final = 0.0003
_INTENT_HAZARD: Final = 0.004
_DEMO_HAZARD: Final = 0.022
_DEMO_WINDOW_DAYS: Final = 21  # a demo keeps the deal warm this long
_DEMO_COOLDOWN_DAYS: Final = 14  # sales is already talking to the lead; no second request meanwhile
_WEBINAR_WINDOW_DAYS: Final = 14
_PRICING_HAZARD: Final = 0.002
_CLICK_HAZARD: Final = 0.001
_WEBINAR_HAZARD: Final = 0.008
_MAX_HAZARD: Final = (
    _BASE_HAZARD + _INTENT_HAZARD + _DEMO_HAZARD + 5 * _PRICING_HAZARD + 3 * _CLICK_HAZARD + _WEBINAR_HAZARD
)


@lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


@lru_cache(maxsize=4096)
def _hour_prefix(hour: int) -> str:
    day, hour_of_day = divmod(hour, 24)
    return f"{_day_prefix(day)}{hour_of_day:02d}:"


def rfc3339_ms(ts_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. '2026-11-22T10:00:00.123Z'."""
    # Hand-formatted with a cached date-and-hour part: datetime.isoformat would dominate generation time.
    hour, in_hour = divmod(ts_ms, HOUR_MS)
    seconds, millis = divmod(in_hour, 1000)
    minute, second = divmod(seconds, 60)
    return f"{_hour_prefix(hour)}{minute:02d}:{second:02d}.{millis:03d}Z"


def epoch_ms(moment: datetime) -> int:
    """A timezone-aware datetime as epoch milliseconds (exact integer arithmetic, no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no timezone; pass an aware datetime such as datetime.now(UTC)")
    return (moment - _EPOCH) // _ONE_MS


@dataclass(frozen=True)
class Webinar:
    name: str
    start_ms: int


@dataclass(frozen=True)
class Campaign:
    name: str
    theme: str
    send_ms: int
    landing_pages: tuple[int, ...]  # page categories its links lead to
    webinar: Webinar | None = None  # the webinar an invite promotes


_NURTURE_THEMES: Final = ("product-update", "webinar-invite", "case-study", "webinar-invite")
_THEME_LANDINGS: Final[Mapping[str, tuple[int, ...]]] = {
    "newsletter": (_BLOG, _BLOG, _PRODUCT),
    "product-update": (_PRODUCT, _DOCS, _PRICING),
    "case-study": (_CASE_STUDY, _CASE_STUDY, _PRICING),
    "webinar-invite": (),
}


class CampaignCalendar:
    """Marketing's shared schedule: every lead on the list gets the same sends on the same days.

    A newsletter on Tuesdays at 14:00 UTC, a nurture mail on Thursdays at 15:00 UTC whose theme rotates
    by week; every other week it invites to a webinar on the following Wednesday at 16:00 UTC.
    """

    def __init__(self, first_day: int, n_days: int) -> None:
        """Schedule for `n_days` UTC days starting on `first_day` (days since the epoch)."""
        sends: dict[int, list[Campaign]] = {}
        webinars: dict[int, list[Webinar]] = {}
        for day in range(n_days):
            absolute = first_day + day
            weekday = (absolute + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
            midnight = absolute * DAY_MS
            date = _day_prefix(absolute)[:-1]
            if weekday == 1:
                newsletter = Campaign(
                    f"newsletter-{date}", "newsletter", midnight + 14 * HOUR_MS, _THEME_LANDINGS["newsletter"]
                )
                sends.setdefault(day, []).append(newsletter)
            elif weekday == 3:
                theme = _NURTURE_THEMES[((absolute + 3) // 7) % len(_NURTURE_THEMES)]
                webinar = None
                if theme == "webinar-invite":
                    webinar_day = day + 6
                    webinar_start = midnight + 6 * DAY_MS + 16 * HOUR_MS
                    webinar = Webinar(f"webinar-{_day_prefix(absolute + 6)[:-1]}", webinar_start)
                    webinars.setdefault(webinar_day, []).append(webinar)
                campaign = Campaign(f"{theme}-{date}", theme, midnight + 15 * HOUR_MS,
                                    _THEME_LANDINGS[theme], webinar)  # fmt: skip
                sends.setdefault(day, []).append(campaign)
        # Indexed by calendar day; most days have nothing, and a tuple index is the cheapest way to say so.
        self.sends = tuple(tuple(sends.get(day, ())) for day in range(n_days))
        self.webinars = tuple(tuple(webinars.get(day, ())) for day in range(n_days))
        self._all_webinars = sorted((w for ws in webinars.values() for w in ws), key=lambda w: w.start_ms)

    def next_webinar_after(self, ts_ms: int) -> Webinar | None:
        return next((webinar for webinar in self._all_webinars if webinar.start_ms > ts_ms), None)


@dataclass(frozen=True)
class _Period:
    """The simulated window in epoch milliseconds, with its UTC days numbered from 0."""

    start_ms: int
    end_ms: int
    first_day: int  # days since the epoch of the UTC day containing start_ms
    n_days: int

    @classmethod
    def of(cls, spec: SimulationSpec) -> _Period:
        start_ms = epoch_ms(spec.start)
        end_ms = start_ms + round(spec.days * DAY_MS)
        first_day = start_ms // DAY_MS
        return cls(start_ms, end_ms, first_day, -(-end_ms // DAY_MS) - first_day)

    def midnight(self, day: int) -> int:
        return (self.first_day + day) * DAY_MS


class LeadJourney:
    """One lead's life, generated lazily one UTC day at a time.

    Nothing beyond the lead's identity is computed until the merge has taken its first event (the
    creation), so a lead costs little before it exists in simulated time. Then the latent intent path
    and daily web-session counts are drawn at once with numpy (they do not depend on what the lead
    does); per-event details come from a Python RNG (fast scalar draws). A day's events may spill into
    later days (an email opened tomorrow), so they wait in a small heap and leave it in timestamp order
    once no earlier event can still be generated.
    """

    # Tens of thousands of these are alive at once; slots keep each one small.
    __slots__ = (
        "_authority", "_bad_address", "_bounced", "_calendar", "_clicks", "_company_size", "_converted_ms",
        "_country", "_created_ms", "_emitted", "_first_day", "_generated", "_intent", "_job_title",
        "_last_demo_day", "_last_webinar_day", "_max_hazard", "_pending", "_period", "_persona",
        "_pricing_views", "_registered", "_rng", "_seed", "_sessions", "_trajectory_seed",
        "_unsubscribed_ms", "_utc_offset_h", "index", "lead_id",
    )  # fmt: skip

    def __init__(self, spec: SimulationSpec, period: _Period, calendar: CampaignCalendar, index: int) -> None:
        self.index = index
        self.lead_id = f"{spec.lead_id_prefix}{index + 1:06d}"
        self._seed = spec.seed
        self._period = period
        self._calendar = calendar
        # One independent stream per (seed, lead): a lead's story does not depend on population size.
        detail_seed, self._trajectory_seed = (
            int(word) for word in np.random.SeedSequence([spec.seed, index]).generate_state(2, np.uint64)
        )
        self._rng = rng = random.Random(detail_seed)

        self._persona = persona = _PERSONA_BY_NAME[_PERSONA_CHOICE.draw(rng)]
        self._country = _COUNTRY_CHOICE.draw(rng)
        self._utc_offset_h = _COUNTRIES[self._country][1]
        self._job_title = persona.job_titles.draw(rng)
        self._company_size = persona.company_sizes.draw(rng)
        self._authority = _TITLE_AUTHORITY.get(self._job_title, _DEFAULT_AUTHORITY)
        self._bad_address = rng.random() < persona.bad_address_rate
        self._created_ms = self._creation_time()
        self._first_day = (self._created_ms - period.midnight(0)) // DAY_MS
        # The most a day's behaviour can make the hazard: a draw above it ends the check early.
        self._max_hazard = _MAX_HAZARD * persona.close_rate * max(_TITLE_AUTHORITY.values())

        self._pending: list[_Pending] = []
        self._generated = 0  # tie-break among pending events with the same ms, in generation order
        self._emitted = 0  # per-lead event number, in timestamp order: the event_id suffix
        # Per lead-day, from the creation day on; filled in when the lead's life starts.
        self._intent = array("d")
        self._sessions = array("H")
        self._pricing_views = array("H")  # counted for the conversion hazard
        self._clicks = array("H")
        self._last_demo_day = -1_000
        self._last_webinar_day = -1_000
        self._registered: set[str] = set()
        self._unsubscribed_ms: int | None = None
        self._bounced = False
        self._converted_ms: int | None = None

    def entries(self) -> Iterator[_Entry]:
        """The lead's events as merge entries, in ascending timestamp order."""
        lead_source = self._persona.lead_sources.draw(self._rng)
        self._emit(self._created_ms, PROFILE_UPDATE, {
            "industry": self._persona.industries.draw(self._rng),
            "company_size": self._company_size,
            "country": self._country,
            "job_title": self._job_title,
            "lead_source": lead_source,
        })  # fmt: skip
        yield self._pop()
        self._plan_life()
        self._sign_up(lead_source)
        pending = self._pending
        for day in range(len(self._intent)):
            midnight = self._period.midnight(self._first_day + day)
            self._live_day(day, midnight)
            if self._converted_ms is not None:
                while pending and pending[0][0] <= self._converted_ms:
                    yield self._pop()
                return
            while pending and pending[0][0] < midnight + DAY_MS:
                yield self._pop()
        while pending:
            yield self._pop()

    def _plan_life(self) -> None:
        n_days = self._period.n_days - self._first_day
        trajectory_rng = np.random.default_rng(self._trajectory_seed)
        intent = _intent_path(trajectory_rng, self._persona, n_days)
        weekdays = (self._period.first_day + self._first_day + np.arange(n_days) + 3) % 7
        activity = np.where(weekdays >= 5, _WEEKEND_ACTIVITY, 1.0)
        # More intent, more visits: a lead in a buying phase is on the site most days.
        sessions = trajectory_rng.poisson(self._persona.web_sessions * (0.4 + 4.0 * intent) * activity)
        # Compact arrays rather than lists of Python objects; they index fast too.
        self._intent = array("d", intent.tobytes())
        self._sessions = array("H", np.minimum(sessions, 50).astype(np.uint16).tobytes())
        self._pricing_views = array("H", bytes(2 * n_days))
        self._clicks = array("H", bytes(2 * n_days))

    # -- emitting -----------------------------------------------------------------------------------

    def _emit(self, ts_ms: int, kind: str, properties: dict[str, Any]) -> None:
        # The one guard for the lead's lifetime: nothing before creation or after the period.
        if self._created_ms <= ts_ms < self._period.end_ms:
            self._generated += 1
            heapq.heappush(self._pending, (ts_ms, self._generated, kind, properties))

    def _pop(self) -> _Entry:
        """The earliest pending event, numbered and in wire format."""
        ts_ms, _, kind, properties = heapq.heappop(self._pending)
        self._emitted += 1
        event = {
            "event_id": f"{self._seed}-{self.lead_id}-{self._emitted}",
            "lead_id": self.lead_id,
            "type": kind,
            "ts": rfc3339_ms(ts_ms),
            "properties": properties,
        }
        return ts_ms, self.index, self._emitted, event

    def _count(self, per_day: array[int], ts_ms: int) -> None:
        day = (ts_ms - self._period.midnight(self._first_day)) // DAY_MS
        if day < len(per_day):
            per_day[day] += 1

    # -- a lead's life ------------------------------------------------------------------------------

    def _creation_time(self) -> int:
        period, rng = self._period, self._rng
        for _ in range(50):
            day = int(rng.random() * period.n_days)
            weekday = (period.first_day + day + 3) % 7
            if weekday >= 5 and rng.random() > _WEEKEND_ACTIVITY:
                continue  # fewer sign-ups at weekends
            created = period.midnight(day) + self._time_of_day_ms()
            if period.start_ms <= created < period.end_ms:
                return created
        return period.start_ms + int(rng.random() * (period.end_ms - period.start_ms))

    def _time_of_day_ms(self) -> int:
        """A UTC time of day for an action, mostly within the lead's local working day."""
        rng = self._rng
        local_hour = rng.random() * 24 if rng.random() < 0.15 else min(max(rng.gauss(13.5, 2.8), 0.0), 23.99)
        return int(((local_hour - self._utc_offset_h) % 24) * HOUR_MS)

    def _sign_up(self, lead_source: str) -> None:
        """What follows the creation: the form that created a web lead, or a webinar registration."""
        rng, created = self._rng, self._created_ms
        intent = self._intent[0]
        if lead_source in ("organic", "paid_search", "referral"):
            # The lead exists because it filled a form on the site; it keeps browsing afterwards.
            form = "contact" if rng.random() < intent else ("ebook" if rng.random() < 0.5 else "newsletter")
            self._emit(created + SECOND_MS, FORM_FILL, {"form": form})
            self._browse(created + 20 * SECOND_MS, intent)
        elif lead_source == "webinar":
            webinar = self._calendar.next_webinar_after(created)
            if webinar is not None:
                self._emit(created + SECOND_MS, WEBINAR_REGISTER, {"webinar": webinar.name})
                self._registered.add(webinar.name)

    def _live_day(self, day: int, midnight: int) -> None:
        rng = self._rng
        intent = self._intent[day]
        calendar_day = self._first_day + day
        for campaign in self._calendar.sends[calendar_day]:
            self._receive(campaign, intent)
        for webinar in self._calendar.webinars[calendar_day]:
            if webinar.name in self._registered:
                self._maybe_attend(webinar, intent, day)
        for _ in range(self._sessions[day]):
            start = midnight + self._time_of_day_ms()
            if start > self._created_ms:  # the creation day only has the hours after sign-up
                self._browse(start, intent)
        if rng.random() < _PROFILE_CHANGE_RATE:
            self._change_profile(midnight + self._time_of_day_ms())
        self._maybe_convert(day, midnight, intent)

    def _receive(self, campaign: Campaign, intent: float) -> None:
        """One campaign send to this lead and its reaction: open, click, unsubscribe or bounce."""
        rng = self._rng
        if self._bounced or (self._unsubscribed_ms is not None and campaign.send_ms >= self._unsubscribed_ms):
            return
        sent = campaign.send_ms + int(rng.random() * 20 * MINUTE_MS)  # the ESP sends in batches
        if sent < self._created_ms:
            return
        name = campaign.name
        self._emit(sent, EMAIL_SEND, {"campaign": name})
        if self._bad_address:
            # Hard bounce: the address is suppressed, so this was the lead's only send.
            self._emit(sent + int(rng.uniform(10, 300) * SECOND_MS), EMAIL_BOUNCE, {"campaign": name})
            self._bounced = True
            return
        if rng.random() >= self._persona.email_affinity * (0.12 + 0.45 * intent):
            return
        opened = sent + min(int(rng.lognormvariate(math.log(_OPEN_MEDIAN_MS), 1.2)), 5 * DAY_MS)
        self._emit(opened, EMAIL_OPEN, {"campaign": name})
        if rng.random() < 0.15:  # read again later
            self._emit(opened + int(rng.expovariate(1 / (6 * HOUR_MS))), EMAIL_OPEN, {"campaign": name})
        if rng.random() < 0.01 + 0.03 * (1 - intent):
            unsubscribed = opened + int(rng.uniform(15, 90) * SECOND_MS)
            self._emit(unsubscribed, EMAIL_UNSUBSCRIBE, {"campaign": name})
            self._unsubscribed_ms = unsubscribed
            return
        if rng.random() >= self._persona.email_affinity * (0.08 + 0.45 * intent):
            return
        clicked = opened + int(rng.uniform(5, 120) * SECOND_MS)
        self._count(self._clicks, clicked)
        if campaign.webinar is not None:
            webinar = campaign.webinar
            self._emit(clicked, EMAIL_CLICK, {"campaign": name, "link": f"{SITE}/webinars/{webinar.name}"})
            if rng.random() < 0.6 and webinar.name not in self._registered:
                self._emit(clicked + int(rng.uniform(40, 180) * SECOND_MS), WEBINAR_REGISTER,
                           {"webinar": webinar.name})  # fmt: skip
                self._registered.add(webinar.name)
            return
        landing = campaign.landing_pages[int(rng.random() * len(campaign.landing_pages))]
        url = _CATEGORY_URLS[landing][int(rng.random() * len(_CATEGORY_URLS[landing]))]
        self._emit(clicked, EMAIL_CLICK, {"campaign": name, "link": f"{url}?utm_medium=email&utm_campaign={name}"})
        if rng.random() < 0.8:  # the click usually opens the site
            self._browse(clicked + 2 * SECOND_MS, intent, landing=landing, landing_url=url)

    def _browse(self, start: int, intent: float, *, landing: int | None = None, landing_url: str = "") -> None:
        """A website session: a few page views, minutes apart, and what the lead does on them."""
        rng, persona = self._rng, self._persona
        mix = _PAGE_MIX[persona.name][round(intent * _PAGE_MIX_LEVELS)]
        pages = 1 + min(int(rng.expovariate(1 / (1.2 + 3.0 * intent))), 20)
        # Competitors and students rarely ask sales for a demo, whatever they read.
        demo_rate = (0.002 + 0.065 * intent * intent) * (0.2 + 0.8 * persona.close_rate)
        ts = start
        for page in range(pages):
            if page == 0 and landing is not None:
                category, url = landing, landing_url
            else:
                category = bisect(mix, rng.random() * mix[-1])
                urls = _CATEGORY_URLS[category]
                url = urls[int(rng.random() * len(urls))]
            self._emit(ts, PAGE_VIEW, {"category": PAGE_CATEGORIES[category], "url": url})
            if category == _PRICING:
                self._count(self._pricing_views, ts)
            if category in _DEMO_PAGES:
                cooled_down = self._day_of(ts) - self._last_demo_day > _DEMO_COOLDOWN_DAYS
                if cooled_down and rng.random() < demo_rate:
                    self._emit(ts + int(rng.uniform(30, 150) * SECOND_MS), DEMO_REQUEST,
                               {"page": PAGE_CATEGORIES[category]})  # fmt: skip
                    self._last_demo_day = self._day_of(ts)
                elif rng.random() < 0.004 + 0.03 * intent:
                    self._emit(ts + int(rng.uniform(30, 150) * SECOND_MS), FORM_FILL, {"form": "contact"})
            elif category == _BLOG and rng.random() < 0.025:
                form = "newsletter" if rng.random() < 0.6 else "ebook"
                self._emit(ts + int(rng.uniform(20, 90) * SECOND_MS), FORM_FILL, {"form": form})
            if rng.random() < _UNKNOWN_TYPE_RATE:
                kind = UNKNOWN_EVENT_TYPES[int(rng.random() * len(UNKNOWN_EVENT_TYPES))]
                self._emit(ts + int(rng.uniform(3, 30) * SECOND_MS), kind, {"url": url})
            ts += int((8 + rng.expovariate(1 / 100)) * SECOND_MS)

    def _day_of(self, ts_ms: int) -> int:
        return (ts_ms - self._period.midnight(self._first_day)) // DAY_MS

    def _maybe_attend(self, webinar: Webinar, intent: float, day: int) -> None:
        rng = self._rng
        if rng.random() < 0.3 + 0.45 * intent:
            minutes = max(3, int(rng.uniform(0.3, 1.0) * (20 + 40 * intent)))
            joined = webinar.start_ms + int(rng.uniform(0, 6) * MINUTE_MS)
            self._emit(joined, WEBINAR_ATTEND, {"webinar": webinar.name, "minutes": minutes})
            self._last_webinar_day = day

    def _change_profile(self, ts_ms: int) -> None:
        """A partial profile_update: a new job title (promotion, job change) or the company grew."""
        rng = self._rng
        if ts_ms <= self._created_ms:
            return  # not before the lead exists
        if rng.random() < 0.5:
            title = self._persona.job_titles.draw(rng)
            if title != self._job_title:
                self._job_title = title
                self._authority = _TITLE_AUTHORITY.get(title, _DEFAULT_AUTHORITY)
                self._emit(ts_ms, PROFILE_UPDATE, {"job_title": title})
        else:
            position = COMPANY_SIZES.index(self._company_size)
            if position + 1 < len(COMPANY_SIZES):
                self._company_size = COMPANY_SIZES[position + 1]
                self._emit(ts_ms, PROFILE_UPDATE, {"company_size": self._company_size})

    def _maybe_convert(self, day: int, midnight: int, intent: float) -> None:
        """Decide whether today's behaviour closes the deal.

        The hazard rises with latent intent and, strongly, with recent observable buying signals; the
        persona's close rate and the contact's authority scale it. Conversion is stamped after the
        day's last event so the signals that caused it stay in the history.
        """
        rng = self._rng
        draw = rng.random()
        if draw >= self._max_hazard:
            return
        recent_pricing = sum(self._pricing_views[max(0, day - 6) : day + 1])
        recent_clicks = sum(self._clicks[max(0, day - 13) : day + 1])
        hazard = (
            (
                _BASE_HAZARD
                + _INTENT_HAZARD * intent * intent
                + (_DEMO_HAZARD if day - self._last_demo_day < _DEMO_WINDOW_DAYS else 0.0)
                + _PRICING_HAZARD * min(recent_pricing, 5)
                + _CLICK_HAZARD * min(recent_clicks, 3)
                + (_WEBINAR_HAZARD if day - self._last_webinar_day < _WEBINAR_WINDOW_DAYS else 0.0)
            )
            * self._persona.close_rate
            * self._authority
        )
        if draw >= hazard:
            return
        today = [entry[0] for entry in self._pending if entry[0] < midnight + DAY_MS]
        if today:
            converted = max(today) + int(rng.uniform(5, 180) * MINUTE_MS)
        else:
            converted = max(midnight + self._time_of_day_ms(), self._created_ms + HOUR_MS)
        if converted >= self._period.end_ms:
            return
        low, high = self._persona.amount_range
        amount = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
        self._converted_ms = converted
        self._emit(converted, CONVERTED, {"plan": self._persona.plan, "amount": amount, "currency": "USD"})


def _intent_path(rng: np.random.Generator, persona: Persona, n_days: int) -> npt.NDArray[np.float64]:
    """Latent buying intent in [0, 1] for each day of a lead's life, from its creation day on."""
    days = np.arange(n_days, dtype=np.float64)
    steps = rng.standard_normal(n_days) * _WALK_STEP
    steps[0] = rng.standard_normal() * _WALK_SPREAD  # start anywhere in the walk's usual spread
    walk = np.fromiter(
        itertools.accumulate(steps.tolist(), lambda level, step: _WALK_KEEP * level + step),
        dtype=np.float64,
        count=n_days,
    )
    # Buying phases: intent climbs over a few days to a peak, then fades over weeks unless the lead buys.
    starts = np.flatnonzero(rng.random(n_days) < persona.buying_phase_rate).tolist()
    if rng.random() < persona.arrives_buying:
        starts.append(0)
    phases = np.zeros(n_days)
    for start in starts:
        peak, rise, fade = rng.uniform(2.0, 4.0), rng.uniform(3.0, 12.0), rng.uniform(8.0, 25.0)
        since = days - start
        shape = np.minimum(since / rise, 1.0) * np.exp(-np.maximum(since - rise, 0.0) / fade)
        phases += np.where(since < 0, 0.0, peak * shape)
    # A new lead has just engaged (a form, a badge scan); that interest fades within about a week.
    welcome = rng.uniform(0.0, 1.5) * np.exp(-days / 5.0)
    logit = persona.intent_logit + walk + phases + welcome
    intent: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logit))
    return intent


def _population(spec: SimulationSpec, *, first_lead: int = 0) -> Iterator[_Entry]:
    """Merge entries of leads first_lead .. first_lead + spec.leads - 1, in (ts, lead, n) order."""
    period = _Period.of(spec)
    calendar = CampaignCalendar(period.first_day, period.n_days)
    journeys = (LeadJourney(spec, period, calendar, first_lead + i) for i in range(spec.leads))
    return heapq.merge(*(journey.entries() for journey in journeys))


def simulate_history(spec: SimulationSpec) -> Iterator[dict[str, Any]]:
    """All events of the whole population over spec.days, in ascending ts order (ties broken deterministically)."""
    for _, _, _, event in _population(spec):
        yield event


def write_history(spec: SimulationSpec, path: Path) -> int:
    """Write simulate_history as JSON lines (gzip if path ends with .gz); returns the number of events."""
    if path.suffix == ".gz":
        # compresslevel 6: close to level 9's size in a fraction of the time.
        with gzip.open(path, "wb", compresslevel=6) as compressed:
            return _write_json_lines(simulate_history(spec), compressed)
    with path.open("wb") as plain:
        return _write_json_lines(simulate_history(spec), plain)


def _write_json_lines(events: Iterator[Event], stream: io.BufferedIOBase) -> int:
    count = 0
    batch: list[bytes] = []
    for event in events:
        batch.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        if len(batch) >= 10_000:  # fewer, larger writes; the compressor likes them too
            stream.writelines(batch)
            count += len(batch)
            batch.clear()
    stream.writelines(batch)
    return count + len(batch)


def live_events(spec: SimulationSpec, *, now: Callable[[], datetime] | None = None) -> Iterator[dict[str, Any]]:
    """An endless stream for a live demo: the same kind of population, events stamped with the current
    time (now()), deterministic order of leads/types for a seed. The consumer paces it; it just yields
    the next event.

    Events come in the order of simulate_history; when the period is used up, a fresh cohort of
    spec.leads new leads (new lead ids, so event ids never repeat) starts over. `now` must return a
    timezone-aware datetime.
    """
    if spec.leads == 0:
        raise ValueError("live_events needs spec.leads >= 1: there is nobody to simulate")
    return _live_stream(spec, now if now is not None else _utc_now)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _live_stream(spec: SimulationSpec, clock: Callable[[], datetime]) -> Iterator[Event]:
    for cohort in itertools.count():
        for _, _, _, event in _population(spec, first_lead=cohort * spec.leads):
            event["ts"] = rfc3339_ms(epoch_ms(clock()))
            yield event

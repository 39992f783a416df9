"""A seeded synthetic event log of an online course platform, in leadscore's event format (JSON lines).

Not marketing leads: students. Each enrols in one of a few cohorts, studies (sessions with a number of clicks),
submits assessments (a score out of 100), posts in the forum, and ends one of three ways: `passed` near the
programme's end (the conversion), `withdrawn` at any time, or, having done neither, `programme_ended` when the
programme closes 240 days after its start. After any of the three a student produces no more events.

How passing depends on what the log shows (so that numeric signals matter, not only event counts):

* A latent *motivation* drifts week by week; it sets the week's engagement e in (0, 1). Engagement sets how many
  clicks a session has (about 6 at e = 0 to 40 at e = 1) more strongly than how many sessions there are (0.8 to
  3 a week), which also follow a personal habit that says nothing about passing.
* Assessment scores rise with a latent *ability* (which prior credits partly reflect) and the last four weeks'
  engagement; a score under 40 discourages (motivation drops), one of 75 or more encourages.
* Low engagement and missed assessments raise the weekly hazard of withdrawing.
* At the end, the chance of passing rises with the coursework mark (the mean of all six assessment scores, a
  missed one counting 0) and with the clicks of the last twelve weeks, plus noise.

Some sessions carry a missing or malformed `clicks` value (about 3%), and some a number sent as a string, as
real trackers do. Run it:

    python docs/examples/course_log.py --out course.jsonl.gz --students 3000 --seed 1

Standard library only. The same seed and size give the same file; each student's events depend only on the seed
and the student's number, so a larger log extends a smaller one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

# A cohort starts each quarter (on a Monday) for a year and a half; every programme lasts PROGRAMME_DAYS, so
# the log spans about two years and holds the whole programme of the earlier cohorts.
COHORT_STARTS = (
    date(2025, 1, 13),
    date(2025, 4, 7),
    date(2025, 7, 7),
    date(2025, 10, 6),
    date(2026, 1, 12),
    date(2026, 4, 13),
)
PROGRAMME_DAYS = 240
ASSESSMENT_DUE_DAYS = (28, 63, 98, 133, 168, 203)  # six tutor-marked assessments
RESULTS_FROM_DAY = 226  # passes are announced on days 226-239, after the final assessment is marked
REGIONS = ("north", "midlands", "south", "london", "wales", "scotland", "overseas")
REGION_WEIGHTS = (0.18, 0.16, 0.2, 0.17, 0.08, 0.11, 0.1)
WITHDRAWAL_REASONS = ("workload", "personal", "financial", "health", "changed_course")
# A few percent of sessions carry a clicks value the fold cannot read: key missing, null, empty, "n/a", "NaN".
INVALID_CLICKS_SHARE = 0.03
NUMERIC_STRING_SHARE = 0.05  # clicks sent as a string holding a number ("17"): valid

DAY_S = 86_400
EPOCH_DAY = date(1970, 1, 1)


@dataclass
class Student:
    """One student's latent traits (never in the log), programme and generated events (times in epoch seconds)."""

    lead_id: str
    start_s: int  # the programme start, midnight UTC
    rng: random.Random
    ability: float
    motivation: float
    habit: float
    sociability: float
    credit_transfer: tuple[float, int] | None = None  # (programme day, prior credits then recognised)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def emit(self, event_type: str, at_s: int, **properties: Any) -> None:
        event_id = f"{self.lead_id}-{len(self.events):04d}"
        # `ts` is written once the whole log is in time order (course_events), a day's date formatted once.
        event = {"event_id": event_id, "lead_id": self.lead_id, "type": event_type, "ts": "", "properties": properties}
        self.events.append((at_s, event))

    def day(self, programme_day: float) -> int:
        """The instant `programme_day` days after the programme start (a fraction is a time of day)."""
        return self.start_s + round(programme_day * DAY_S)

    def waking_time(self, first_day: int, days: int) -> int:
        """A random time between 07:00 and 23:00 on one of `days` days from programme day `first_day`."""
        day = first_day + self.rng.randrange(days)
        return self.day(day + self.rng.uniform(7 / 24, 23 / 24))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means used here."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _clicks_property(rng: random.Random, clicks: int) -> dict[str, Any]:
    draw = rng.random()
    if draw < INVALID_CLICKS_SHARE:
        malformed: list[dict[str, Any]] = [{}, {"clicks": None}, {"clicks": ""}, {"clicks": "n/a"}, {"clicks": "NaN"}]
        return rng.choice(malformed)
    if draw < INVALID_CLICKS_SHARE + NUMERIC_STRING_SHARE:
        return {"clicks": str(clicks)}
    return {"clicks": clicks}


def _age_band(age: int) -> str:
    return "18-24" if age < 25 else "25-34" if age < 35 else "35-49" if age < 50 else "50+"


def new_student(index: int, seed: int, first_cohort: date = COHORT_STARTS[0]) -> Student:
    """Student number `index`, enrolled in a cohort (cohorts moved so that the first starts on `first_cohort`)."""
    # Seeded per student: a student's events depend on the seed and its number only.
    rng = random.Random(f"course/{seed}/{index}")
    start = rng.choice(COHORT_STARTS) + (first_cohort - COHORT_STARTS[0])
    age = min(max(round(rng.gauss(31, 10)), 18), 75)
    # Mature students are more committed on average; the youngest the least.
    age_effect = {"18-24": -0.3, "25-34": 0.0, "35-49": 0.15, "50+": 0.3}[_age_band(age)]
    student = Student(
        lead_id=f"S-{index:05d}",
        start_s=(start - EPOCH_DAY).days * DAY_S,
        rng=rng,
        ability=rng.gauss(0, 1),
        motivation=rng.gauss(0, 1) + age_effect,
        habit=rng.gauss(0, 1),
        sociability=rng.lognormvariate(0, 0.7),
    )
    # Prior credits reflect ability only partly; 8% of profiles lack them, 5% send them as text (a CSV import).
    credits = max(0, 5 * round((40 + 30 * (0.5 * student.ability + 0.87 * rng.gauss(0, 1))) / 5))
    profile: dict[str, Any] = {
        "region": rng.choices(REGIONS, REGION_WEIGHTS)[0],
        "age_band": _age_band(age),
        "programme_start": start.isoformat(),
    }
    draw = rng.random()
    if draw >= 0.08:
        profile["prior_credits"] = str(credits) if draw < 0.13 else credits
        if rng.random() < 0.1:  # a credit transfer recognised in the first weeks: a later update wins
            student.credit_transfer = (rng.uniform(7, 60), credits + 30)
    student.emit("profile_update", student.day(-rng.uniform(3, 28)), **profile)
    return student


def live_programme(student: Student) -> None:
    """Generate the student's study weeks and the way the programme ends for them."""
    rng = student.rng
    drift = 0.0
    engagement_by_week: list[float] = []
    clicks_by_week: list[int] = []
    scores: dict[int, int] = {}  # due day -> score
    missed_last_week = False
    outcome, end_s = "", student.day(PROGRAMME_DAYS)  # nothing at or after end_s but the ending event
    for week in range(math.ceil(PROGRAMME_DAYS / 7)):
        first_day = 7 * week
        days = min(7, PROGRAMME_DAYS - first_day)
        drift += rng.gauss(-0.02, 0.3)  # attention fades a little, and wanders
        engagement = _sigmoid(0.6 + 1.1 * student.motivation + drift)
        engagement_by_week.append(engagement)
        if not outcome and first_day + 7 > RESULTS_FROM_DAY:
            outcome, end_s = _final_result(student, scores, clicks_by_week)
        elif not outcome and rng.random() < 0.002 + 0.04 * (1 - engagement) ** 4 + (0.04 if missed_last_week else 0):
            outcome, end_s = "withdrawn", student.day(first_day + rng.uniform(0, days))

        week_clicks = 0
        for _ in range(_poisson(rng, math.exp(0.35 * student.habit) * (0.8 + 2.2 * engagement) * days / 7)):
            at_s = student.waking_time(first_day, days)
            clicks = max(1, round(rng.lognormvariate(math.log(6 + 34 * engagement**2), 0.5)))
            if at_s < end_s:
                week_clicks += clicks
                student.emit("session", at_s, **_clicks_property(rng, clicks))
        clicks_by_week.append(week_clicks)
        for _ in range(_poisson(rng, 0.25 * student.sociability * (0.3 + engagement) * days / 7)):
            at_s = student.waking_time(first_day, days)
            if at_s < end_s:
                student.emit("forum_post", at_s)
        if student.credit_transfer and first_day <= student.credit_transfer[0] < first_day + 7:
            at_s = student.day(student.credit_transfer[0])
            if at_s < end_s:
                student.emit("profile_update", at_s, prior_credits=student.credit_transfer[1])
        missed_last_week = False
        for due in ASSESSMENT_DUE_DAYS:
            if not first_day <= due < first_day + 7:
                continue
            at_s = student.day(due - rng.uniform(0, 4))
            if rng.random() < 0.25 + 0.7 * engagement and at_s < end_s:
                recent = sum(engagement_by_week[-4:]) / len(engagement_by_week[-4:])
                score = round(min(max(52 + 11 * student.ability + 30 * (recent - 0.5) + rng.gauss(0, 8), 0), 100))
                scores[due] = score
                student.emit("assessment_submitted", at_s, score=score)
                drift += -0.4 if score < 40 else 0.2 if score >= 75 else 0.0
            else:
                missed_last_week = True
        if outcome == "withdrawn":
            student.emit("withdrawn", end_s, reason=rng.choice(WITHDRAWAL_REASONS))
            return
    if outcome == "passed":
        mark = sum(scores.values()) / len(ASSESSMENT_DUE_DAYS)
        grade = "distinction" if mark >= 75 else "merit" if mark >= 60 else "pass"
        student.emit("passed", end_s, grade=grade)
    else:
        student.emit("programme_ended", end_s, result="not_passed")


def _final_result(student: Student, scores: dict[int, int], clicks_by_week: list[int]) -> tuple[str, int]:
    """Whether the student passes, and when their programme ends for them (the pass, or the programme's end)."""
    mark = sum(scores.values()) / len(ASSESSMENT_DUE_DAYS)  # a missed assessment counts 0
    recent_clicks = clicks_by_week[-12:]
    weekly_clicks = sum(recent_clicks) / max(len(recent_clicks), 1)
    chance = _sigmoid(0.12 * (mark - 42) + 0.6 * math.log((weekly_clicks + 5) / 40) + student.rng.gauss(0, 0.7))
    if student.rng.random() < chance:
        return "passed", student.day(student.rng.uniform(RESULTS_FROM_DAY, PROGRAMME_DAYS - 1))
    return "programme_ended", student.day(PROGRAMME_DAYS)


def rfc3339(epoch_s: int, day_prefixes: dict[int, str]) -> str:
    """'2026-01-12T09:30:00Z' (strftime per event would be the slowest step; a day's prefix is made once)."""
    day, second = divmod(epoch_s, DAY_S)
    prefix = day_prefixes.get(day)
    if prefix is None:
        prefix = day_prefixes[day] = f"{EPOCH_DAY + timedelta(days=day):%Y-%m-%d}T"
    hours, rest = divmod(second, 3600)
    return f"{prefix}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def course_events(
    students: int, seed: int, first_cohort: date = COHORT_STARTS[0], until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Every student's events before `until` (all when None), in event-time order (ties in student order)."""
    until_s = math.inf if until is None else until.timestamp()
    timeline: list[tuple[int, int, dict[str, Any]]] = []
    for index in range(1, students + 1):
        student = new_student(index, seed, first_cohort)
        live_programme(student)
        timeline.extend((at_s, index, event) for at_s, event in student.events if at_s < until_s)
    timeline.sort(key=lambda item: (item[0], item[1]))
    day_prefixes: dict[int, str] = {}
    for at_s, _, event in timeline:
        event["ts"] = rfc3339(at_s, day_prefixes)
        yield event


def write_course_log(path: Path, events: Iterable[dict[str, Any]]) -> int:
    """Write events as JSON lines (gzip when the name ends in .gz); returns how many."""
    lines = [json.dumps(event, separators=(",", ":")) for event in events]
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as out:
            out.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return len(lines)


def _until(text: str) -> datetime:
    if text == "now":
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the log to write (.jsonl or .jsonl.gz)")
    parser.add_argument("--students", type=int, default=3000, help="how many students (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--first-cohort",
        type=date.fromisoformat,
        default=COHORT_STARTS[0],
        help=f"the first cohort's start date; the others keep their spacing (default {COHORT_STARTS[0]})",
    )
    parser.add_argument(
        "--until",
        type=_until,
        default=None,
        help="keep only events before this time ('now', a date or an RFC 3339 time): a platform whose later"
        " cohorts are still studying (default: every event, up to the last cohort's end)",
    )
    args = parser.parse_args(argv)
    if args.students < 1:
        parser.error("--students must be at least 1")
    written = write_course_log(args.out, course_events(args.students, args.seed, args.first_cohort, args.until))
    print(f"wrote {written:,} events of {args.students:,} students to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

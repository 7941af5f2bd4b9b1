"""Which snapshot a restarted stream seeks back to, and which ones can go."""
from pipelines.restart_points import Point, obsolete, parse_point, restart_point

MIN_MS = 60_000
START = 1_764_000_000_000  # a job's start, ms


def job(start: int, *minutes: int) -> list[Point]:
    """A job's start point and one point per given minute after its start."""
    return [Point(start, start)] + [Point(start, start + m * MIN_MS) for m in minutes]


def test_a_young_job_restarts_from_its_start_point():
    # the newest snapshot is 4 minutes after the start: nothing is proven with a 5m margin
    assert restart_point(job(START, 1, 2, 3, 4), 5 * MIN_MS) == Point(START, START)


def test_a_point_is_safe_once_a_later_snapshot_shows_the_job_ran_margin_past_it():
    points = job(START, 1, 2, 3, 4, 5, 6, 7)
    # newest at +7 min: +2 is the newest point with 5 minutes of proven running after it
    assert restart_point(points, 5 * MIN_MS) == Point(START, START + 2 * MIN_MS)
    assert obsolete(points, 5 * MIN_MS) == [Point(START, START), Point(START, START + MIN_MS)]


def test_a_gap_in_snapshots_proves_nothing_beyond_the_newest():
    # the job stopped taking snapshots at +1 min (hung or crashed), a restart came much later
    assert restart_point(job(START, 1), 5 * MIN_MS) == Point(START, START)


def test_only_the_last_jobs_points_count():
    # an earlier job's old points look "proven" by the new job's start: they are not its own
    earlier = job(START, 1, 2, 3)
    later = job(START + 60 * MIN_MS)
    assert restart_point(earlier + later, 5 * MIN_MS) == Point(START + 60 * MIN_MS,
                                                               START + 60 * MIN_MS)
    assert restart_point([], 5 * MIN_MS) is None
    assert obsolete([], 5 * MIN_MS) == []


def test_snapshot_names_round_trip_and_other_snapshots_are_ignored():
    point = Point(START, START + 30_000)
    assert parse_point(point.name("usage-sub"), "usage-sub") == point
    assert parse_point(point.name("usage-sub-2"), "usage-sub") is None
    assert parse_point("usage-sub-before-update", "usage-sub") is None
